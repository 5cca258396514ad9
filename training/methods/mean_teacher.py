"""Mean teacher with CutMix consistency (the paper's MT row): one student, one EMA teacher."""
from __future__ import annotations

from training.methods import ema, losses
from training.methods.base import Method, cutmix, mixed_pseudo_labels


class MeanTeacher(Method):
    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.student = build_network()
        self.teacher = self.make_teacher(self.student)

    def teachers(self):
        return [self.teacher]

    def forward(self, batch, iteration, epoch):
        sup = self.supervised_loss(self.student(batch["image"]), batch["label"])
        u0, u1, mask = batch["unlabeled"], batch["mix"], batch["mask"]
        pseudo, confidence = mixed_pseudo_labels(self.teacher, u0, u1, mask)
        unsup = losses.weighted_ce(self.student(cutmix(u0, u1, mask)).float(), pseudo, confidence)
        return {"loss": sup + self.unsup_weight(iteration) * unsup, "sup": sup, "unsup": unsup}

    def param_groups(self, weight_decay):
        return self.student.param_groups(weight_decay)

    def update_teachers(self, iteration):
        ema.ema_update(self.teacher, self.student, self.cfg.ema_decay)

    def evaluated_network(self):
        return self.student
