"""The contract every registered Distiller keeps, checked for each one by ``fdcore.testing.check_distiller`` (the
check plugin authors run too): declared views, alignment and gathering; a training step as the recipe drives it;
state that survives a checkpoint."""

import pytest

import fdcore
from fdcore.builtin.distillers import DenseL2
from fdcore.testing import DISTILLER_CHECKS, check_distiller

DISTILLERS = fdcore.list_distillers()


def test_the_builtin_distillers_are_registered():
    assert {"dense-l2", "crd"} <= set(DISTILLERS)


@pytest.mark.parametrize("check", DISTILLER_CHECKS)
@pytest.mark.parametrize("name", DISTILLERS)
def test_distiller_conformance(name, check):
    check_distiller(name, checks=check)


def test_crd_passes_with_a_transformer_student_and_small_options():
    check_distiller("crd", expert="siglip", queue_size=8, projection_dim=4)


def test_declarations_of_the_builtin_distillers():
    crd, dense = fdcore.registry.get("distillers", "crd"), fdcore.registry.get("distillers", "dense-l2")
    assert (crd.views, crd.gathers, crd.needs_alignment) == (2, True, False)
    assert (dense.views, dense.gathers, dense.needs_alignment) == (1, False, True)


def test_needs_views_still_declares_the_views():
    class TwoViews(DenseL2):
        needs_views = 2  # the attribute's name before `views`

    assert (TwoViews.views, TwoViews.needs_views) == (2, 2)
    assert (DenseL2.views, DenseL2.needs_views) == (1, 1)


def test_a_distiller_that_gathers_without_declaring_it_is_caught():
    class GatheringDenseL2(DenseL2):
        name = "gathering-dense-l2"

        def loss(self, student_out, teacher_out, batch=None):
            self.gather(next(iter(teacher_out.values())))  # the recipe gives no gather to undeclared distillers
            return super().loss(student_out, teacher_out, batch)

    with pytest.raises(AssertionError, match="'gathering-dense-l2' fails the 'training_step' check: called "
                                             r"self.gather\(\) without declaring gathers = True"):
        check_distiller(GatheringDenseL2, checks="training_step")


def test_a_distiller_that_reads_a_second_view_without_declaring_it_is_caught():
    class SecondViewDenseL2(DenseL2):
        name = "second-view-dense-l2"

        def student_step(self, student, batch, layers=None):
            logits, student_features = student(batch["pixels"], layers)
            teacher_features = self.teacher_outputs(batch["pixels_view2"], layers)
            return logits, self.loss(student_features, teacher_features, batch)

    with pytest.raises(AssertionError, match=r"read batch\['pixels_view2'\], but a batch for views = 1"):
        check_distiller(SecondViewDenseL2, checks="training_step")
