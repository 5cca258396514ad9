"""Which teacher follows which student, and which student each teacher supervises
(docs/methods/stpg.md §1)."""
import torch

from tests.training.test_engine import NORM
from training import params
from training.methods import MethodContext, method_class
from training.methods.selection import select_pixels
from training.models import build_model


def build(**stpg):
    cfg = params.section("train", method="stpg", stpg=stpg)
    context = MethodContext(num_classes=3, dataset="cityscapes", batch_size=2, num_labeled=4, iters_per_epoch=10,
                            **NORM)
    torch.manual_seed(0)
    return method_class("stpg")(cfg, context, lambda: build_model("resnet18", 3, proj_dim=8))


def test_teachers_start_as_copies_of_their_own_student():
    m = build()
    for teacher, student, other in ((m.gen_teacher, m.gen_student, m.pro_student),
                                    (m.pro_teacher, m.pro_student, m.gen_student)):
        w_t = teacher.head.classifier.weight
        assert torch.equal(w_t, student.head.classifier.weight)
        assert not torch.equal(w_t, other.head.classifier.weight)  # independent heads
        assert not w_t.requires_grad


def test_ema_follows_own_student():
    m = build()
    with torch.no_grad():
        m.gen_student.head.classifier.bias.fill_(1.0)
        m.gen_teacher.head.classifier.bias.fill_(0.0)
        m.pro_student.head.classifier.bias.fill_(-1.0)
        m.pro_teacher.head.classifier.bias.fill_(0.0)
    m.update_teachers(0)
    torch.testing.assert_close(m.gen_teacher.head.classifier.bias, torch.full((3,), 0.01))
    torch.testing.assert_close(m.pro_teacher.head.classifier.bias, torch.full((3,), -0.01))


class ConstantTeacher(torch.nn.Module):
    """Always predicts one class with logit 10."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def forward(self, x, return_features=False):
        logits = torch.zeros(x.shape[0], 3, *x.shape[-2:])
        logits[:, self.cls] = 10.0
        return logits


def test_cross_supervision_targets():
    m = build(memory_start_epoch=99, contrast_start_epoch=99)
    m.gen_teacher, m.pro_teacher = ConstantTeacher(1), ConstantTeacher(2)
    m.train()
    x = torch.randn(2, 3, 32, 32)
    batch = {"image": x, "label": torch.zeros(2, 32, 32, dtype=torch.long), "unlabeled": x, "mix": x,
             "mask": torch.zeros(2, 32, 32, dtype=torch.uint8)}
    torch.manual_seed(1)
    out = m(batch, 0, 0)
    # recompute what each student should have been taught, with the same dropout/BN draws
    torch.manual_seed(1)
    m.gen_student(x, return_features=True)
    m.pro_student(x)
    gen_logits, _ = m.gen_student(x, return_features=True)
    pro_logits = m.pro_student(x)
    conf = torch.softmax(torch.tensor([0.0, 10.0, 0.0]), 0)[1]
    ce = torch.nn.functional.cross_entropy
    # Gen-Student learns the Pro-Teacher's class 2 on every pixel
    torch.testing.assert_close(out["gen"], conf * ce(gen_logits, torch.full((2, 32, 32), 2)), rtol=1e-4, atol=1e-5)
    # Pro-Student learns the Gen-Teacher's class 1 on the pixels the mismatch score selects
    per_pixel = ce(pro_logits, torch.full((2, 32, 32), 1), reduction="none")
    selected = select_pixels(torch.full((2, 32, 32), 1), pro_logits.argmax(1), 3)
    torch.testing.assert_close(out["pro"], (conf * selected * per_pixel).mean(), rtol=1e-4, atol=1e-5)
    assert float(out["selected"]) == float(selected.mean())


def test_trained_projection_heads_take_the_engine_weight_decay_rule():
    method = build(train_projection=True)
    undecayed = {id(p) for group in method.param_groups(1e-4) if group["weight_decay"] == 0 for p in group["params"]}
    decayed = {id(p) for group in method.param_groups(1e-4) if group["weight_decay"] > 0 for p in group["params"]}
    for student in (method.gen_student, method.pro_student):
        for module in student.projector.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                assert {id(module.weight), id(module.bias)} <= undecayed
            elif isinstance(module, torch.nn.Conv2d):
                assert id(module.weight) in decayed
    frozen = build()
    assert not {id(p) for group in frozen.param_groups(1e-4) for p in group["params"]} & {
        id(p) for p in frozen.gen_student.projector.parameters()}
