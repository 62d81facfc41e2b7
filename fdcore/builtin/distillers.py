"""Built-in distillers."""

from __future__ import annotations

import torch

from fdcore.hookspecs import hookimpl
from fdcore.interfaces import Distiller


class DenseL2(Distiller):
    """FeatDistill's stage-2 loss (paper Eq. 2): squared L2 distance between student and frozen-teacher token maps.

    ``student_out`` and ``teacher_out`` are ``{layer: [B, N, C]}`` from :meth:`fdcore.Expert.features`; the loss is
    the mean squared difference per layer, averaged over layers. Tokens are compared position by position, so
    training must not use pixel-moving degradations (``needs_alignment``).
    """

    name = "dense-l2"
    description = "mean squared distance between student and frozen-teacher dense token maps (paper Eq. 2)"
    needs_alignment = True

    def loss(self, student_out, teacher_out, batch=None):
        if not student_out:
            raise ValueError("dense-l2: no student features to distil")
        missing = sorted(set(student_out) ^ set(teacher_out))
        if missing:
            raise ValueError(f"dense-l2: student and teacher features differ in layers {missing}")
        terms = []
        for layer in sorted(student_out):
            student, teacher = student_out[layer], teacher_out[layer]
            if student.shape != teacher.shape:
                raise ValueError(f"dense-l2: layer {layer!r} shapes differ: student {tuple(student.shape)}, "
                                 f"teacher {tuple(teacher.shape)}")
            terms.append(torch.mean((student.float() - teacher.detach().float()) ** 2))
        return torch.stack(terms).mean()


@hookimpl
def register_distillers(register):
    register(DenseL2)
