"""STPG: Gen/Pro students, cross-supervising EMA teachers, mismatch-score pixel selection and
dual anchor contrast (docs/methods/stpg.md; params.yaml sets the code's behaviour, the paper's are switches).

Roles: Gen-Student (branch 1, evaluated) learns from the Pro-Teacher on every pixel; Pro-Student
(branch 2) learns from the Gen-Teacher on the pixels selected by the class mismatch score. Each
teacher is the EMA of the student with its own branch index.
"""
from __future__ import annotations

import torch

from training.methods import anchors, contrast, ema, losses, selection
from training.methods.base import Method, cutmix, mixed_pseudo_labels


class STPG(Method):
    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.p = train_cfg.stpg
        self.gen_student = build_network()
        self.pro_student = build_network()  # an independent random head: the "different initialisation"
        self.gen_teacher = self.make_teacher(self.gen_student)
        self.pro_teacher = self.make_teacher(self.pro_student)
        if not self.p.train_projection:  # docs/methods/stpg.md §1: the code never optimises the projection heads
            for student in (self.gen_student, self.pro_student):
                student.projector.requires_grad_(False)
        k, dim = context.num_classes, self.gen_student.projector[-1].out_channels
        self.register_buffer("anchors", torch.from_numpy(anchors.uniform_anchors(k, dim)))
        # Prototypes and memory are modules with buffers: state_dict() resumes them exactly.
        self.prototypes = contrast.Prototypes(k, dim, momentum=self.p.prototype_momentum, seed=train_cfg.seed)
        self.memory = contrast.MemoryBank(k, dim, capacity=self.p.memory_size)
        self.insertions = contrast.per_class_insertions(
            "voc" if context.dataset == "voc" else "cityscapes", context.batch_size, context.num_labeled, k)

    def teachers(self):
        return [self.gen_teacher, self.pro_teacher]

    def forward(self, batch, iteration, epoch):
        p, k = self.p, self.context.num_classes
        x, y = batch["image"], batch["label"]
        u0, u1, mask = batch["unlabeled"], batch["mix"], batch["mask"]

        # 1. supervised, both students
        gen_logits_l, gen_feats_l = self.gen_student(x, return_features=True)
        sup = self.supervised_loss(gen_logits_l, y) + self.supervised_loss(self.pro_student(x), y)

        # 2. teachers on the un-mixed images, logits mixed with the box mask
        gen_pseudo, gen_conf = mixed_pseudo_labels(self.gen_teacher, u0, u1, mask)
        pro_pseudo, pro_conf = mixed_pseudo_labels(self.pro_teacher, u0, u1, mask)

        # 3. students on the mixed images
        mixed = cutmix(u0, u1, mask)
        gen_logits_u, gen_feats_u = self.gen_student(mixed, return_features=True)
        pro_logits_u = self.pro_student(mixed)

        # 4. pixel selection from Gen-Teacher labels vs Pro-Student predictions (all pixels)
        selected = selection.select_pixels(gen_pseudo, pro_logits_u.detach().argmax(dim=1), k)

        # 5. general (all pixels, Pro-Teacher labels) and professional (selected, Gen-Teacher) losses
        gen = losses.weighted_ce(gen_logits_u.float(), pro_pseudo, pro_conf)
        pro = losses.weighted_ce(pro_logits_u.float(), gen_pseudo, gen_conf * selected)
        total = sup + self.unsup_weight(iteration) * (gen + pro)
        out = {"sup": sup, "gen": gen, "pro": pro}

        # 6. memory bank from confident, correct labeled pixels of a teacher (Pro-Teacher in the code)
        if epoch >= p.memory_start_epoch:
            self._update_memory(x, y, epoch)

        # 7. dual anchor contrast on the Gen-Student's projections
        if epoch >= p.contrast_start_epoch:
            assigned = self.prototypes.assigned_anchors
            con = (contrast.anchor_contrast_loss(gen_feats_l.float(), y, assigned, self.memory, p.anchor_temperature)
                   + contrast.anchor_contrast_loss(gen_feats_u.float(), pro_pseudo, assigned, self.memory,
                                                   p.anchor_temperature))
            total = total + p.contrast_weight * con
            out["contrast"] = con
        out["loss"] = total
        out["selected"] = selected.mean()
        return out

    def _update_memory(self, x, y, epoch):
        p = self.p
        teacher = self.pro_teacher if p.memory_source == "pro_teacher" else self.gen_teacher
        with torch.inference_mode():
            logits, feats = teacher(x, return_features=True)
        features, labels = contrast.memory_filter(logits.float(), y, feats.float(), p.memory_conf_thresh)
        proximity = epoch >= p.proximity_start_epoch
        # Insertion ranks by the assignment of the previous Hungarian step (docs/methods/stpg.md §6), then the
        # prototypes and the assignment move on.
        self.memory.insert(features.clone(), labels.clone(), self.insertions,
                           self.prototypes.assigned_anchors if proximity else None)
        self.prototypes.update(features, labels)
        if p.hungarian_end_epoch is None or epoch <= p.hungarian_end_epoch:
            self.prototypes.assign(self.anchors)

    def param_groups(self, weight_decay):
        heads = self.p.train_projection
        return (self.gen_student.param_groups(weight_decay, projector=heads)
                + self.pro_student.param_groups(weight_decay, projector=heads))

    def update_teachers(self, iteration):
        ema.ema_update(self.gen_teacher, self.gen_student, self.cfg.ema_decay)
        ema.ema_update(self.pro_teacher, self.pro_student, self.cfg.ema_decay)

    def evaluated_network(self):
        return self.gen_student
