"""Supervised baseline: the labeled images only (the 'Sup' row of the paper's tables)."""
from __future__ import annotations

from training.methods.base import Method


class Supervised(Method):
    needs_unlabeled = False

    def __init__(self, train_cfg, context, build_network):
        super().__init__(train_cfg, context, build_network)
        self.student = build_network()

    def forward(self, batch, iteration, epoch):
        loss = self.supervised_loss(self.student(batch["image"]), batch["label"])
        return {"loss": loss, "sup": loss}

    def param_groups(self, weight_decay):
        return self.student.param_groups(weight_decay)

    def evaluated_network(self):
        return self.student
