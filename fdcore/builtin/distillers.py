"""Built-in distillers."""

from __future__ import annotations

import copy
import math

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


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, maximum: float = 0.9999) -> float:
    """Paper Eq. 5: m = m_max - (m_max - m_base) * (cos(pi * step / total) + 1) / 2 (m_base at 0, m_max at the end)."""
    progress = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return maximum - (maximum - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


class ContrastiveRepresentationDistillation(Distiller):
    """CRD with a MoCo-style negative queue and a cosine-scheduled momentum teacher (the paper's Sec. 5.1 variant).

    Two independently degraded views of each image: the student embeds view 1, the momentum teacher embeds view 2;
    an InfoNCE loss pulls the pair together and pushes the student's embedding away from the queue of earlier
    teacher embeddings (other images). Embeddings are the mean of the last requested layer's tokens, projected to
    ``projection_dim`` and L2-normalised. After every optimizer step the teacher (backbone + projection) moves
    towards the student with momentum :func:`cosine_momentum`. In distributed training every process enqueues the
    keys of all processes (``gathers``), so the queue is the same everywhere.
    """

    name = "crd"
    description = "contrastive distillation with a MoCo negative queue and a cosine-momentum teacher"
    needs_alignment = False
    views = 2
    gathers = True

    def __init__(self, teacher=None, projection_dim: int = 128, queue_size: int = 4096, temperature: float = 0.07,
                 momentum_base: float = 0.99, momentum_max: float = 0.9999, seed: int = 0, **options):
        super().__init__(teacher, **options)
        if teacher is None:
            raise ValueError("crd needs a teacher expert (the stage-1 checkpoint)")
        if queue_size < 1 or not 0 < temperature:
            raise ValueError(f"crd: queue_size must be >= 1 and temperature > 0, got {queue_size}, {temperature}")
        self.temperature = float(temperature)
        self.momentum_base, self.momentum_max = float(momentum_base), float(momentum_max)
        size = teacher.preprocessing.size
        with torch.no_grad():
            width = self._pooled(teacher, torch.zeros(1, 3, size, size), None).shape[-1]
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        self.student_projection = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.ReLU(),
                                                      torch.nn.Linear(width, projection_dim))
        torch.random.set_rng_state(generator_state)
        self.teacher_projection = copy.deepcopy(self.student_projection).requires_grad_(False)
        queue = torch.randn(queue_size, projection_dim, generator=torch.Generator().manual_seed(seed))
        self.queue = torch.nn.functional.normalize(queue, dim=1)
        self.queue_pointer = 0

    @staticmethod
    def _pooled(expert, pixels, layers):
        features = expert.features(pixels, layers)
        last = list(features)[-1]
        return features[last].float().mean(dim=1)

    def student_step(self, student, batch, layers=None):
        logits, features = student(batch["pixels"], layers)
        last = list(features)[-1]
        query = torch.nn.functional.normalize(self.student_projection(features[last].float().mean(dim=1)), dim=1)
        with torch.no_grad():
            self.teacher.eval()
            key = torch.nn.functional.normalize(
                self.teacher_projection(self._pooled(self.teacher, batch["pixels_view2"], layers)), dim=1)
        return logits, self.loss(query, key, batch)

    def loss(self, student_out, teacher_out, batch=None):
        queue = self.queue.to(student_out.device, copy=True)  # the queue changes in place after this step
        positive = (student_out * teacher_out).sum(dim=1, keepdim=True)
        negative = student_out @ queue.t()
        logits = torch.cat([positive, negative], dim=1) / self.temperature
        target = torch.zeros(len(logits), dtype=torch.long, device=logits.device)
        loss = torch.nn.functional.cross_entropy(logits, target)
        self._enqueue(teacher_out.detach())
        return loss

    def _enqueue(self, keys):
        keys = self.gather(keys).float().cpu()
        for key in keys[: len(self.queue)]:
            self.queue[self.queue_pointer] = key
            self.queue_pointer = (self.queue_pointer + 1) % len(self.queue)

    def trainable_modules(self):
        return [self.student_projection]

    @torch.no_grad()
    def after_optimizer_step(self, student, step, total_steps):
        momentum = cosine_momentum(step, total_steps, self.momentum_base, self.momentum_max)
        for source, target in ((student, self.teacher), (self.student_projection, self.teacher_projection)):
            target_parameters = dict(target.named_parameters())
            for name, parameter in source.named_parameters():
                target_parameters[name].mul_(momentum).add_(parameter.detach().to(target_parameters[name].dtype),
                                                            alpha=1.0 - momentum)

    def state_dict(self):
        return {"queue": self.queue.clone(), "queue_pointer": self.queue_pointer,
                "teacher": {k: v.clone() for k, v in self.teacher.state_dict().items()},
                "teacher_projection": self.teacher_projection.state_dict()}

    def load_state_dict(self, state):
        self.queue = state["queue"].clone()
        self.queue_pointer = int(state["queue_pointer"])
        self.teacher.load_state_dict(state["teacher"])
        self.teacher_projection.load_state_dict(state["teacher_projection"])


@hookimpl
def register_distillers(register):
    register(DenseL2)
    register(ContrastiveRepresentationDistillation)
