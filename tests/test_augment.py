"""Classical augmentation (``augment=``): each op on hand-computed cases, the config group, and
tiny real runs of the classifier, ssl_gan and augmented_classifier with augmented batches."""

from __future__ import annotations

import itertools
from pathlib import Path

import hydra
import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from gendisc.data.augment import Augment, affine, flip, translate
from gendisc.data.batches import to_unit_range
from gendisc.errors import ConfigError, gendisc_cause
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import PROJECT_ROOT
from tests.test_resume_models import kill_resume_and_compare

OPTIONS = sorted(p.stem for p in (PROJECT_ROOT / "conf" / "augment").glob("*.yaml"))
TINY = [
    "data.val_size=100",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "callbacks.rich_progress_bar=null",
    "seed=7",
]


def _augment(make_cfg, name: str, *overrides: str) -> Augment:
    """The Augment module of ``augment=<name>`` as the composed train config builds it."""
    return hydra.utils.instantiate(make_cfg([f"augment={name}", *overrides]).augment)


# ------------------------------------------------------------------------------ the operations
@pytest.mark.parametrize("dx,dy", [(0, 0), (1, 2), (-2, 1), (2, -2)])
def test_translate_moves_a_pixel_by_dx_dy(dx, dy):
    image = torch.zeros(1, 1, 6, 7)
    image[0, 0, 3, 2] = 1.0  # row (y) 3, column (x) 2
    moved = translate(image, torch.tensor([[dx, dy]]), fill=0.0)
    assert moved[0, 0].nonzero().tolist() == [[3 + dy, 2 + dx]]


def test_translate_moves_each_image_by_its_own_shift_and_drops_what_leaves():
    images = torch.zeros(2, 1, 4, 4)
    images[:, 0, 0, 0] = 1.0
    moved = translate(images, torch.tensor([[3, 1], [-1, 0]]), fill=0.0)
    assert moved[0, 0].nonzero().tolist() == [[1, 3]]
    assert moved[1].abs().sum() == 0  # moved out of the frame: only the fill enters


@pytest.mark.parametrize(
    "padding,right,left",
    [
        ("constant", [-1.0, -1.0, 0.0, 1.0], [1.0, 2.0, 3.0, -1.0]),
        ("edge", [0.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 3.0]),
        ("reflect", [2.0, 1.0, 0.0, 1.0], [1.0, 2.0, 3.0, 2.0]),
    ],
)
def test_translate_borders(padding, right, left):
    row = torch.arange(4.0).expand(1, 1, 3, 4)  # every row 0 1 2 3
    assert translate(row, torch.tensor([[2, 0]]), padding)[0, 0, 1].tolist() == right
    assert translate(row, torch.tensor([[-1, 0]]), padding)[0, 0, 1].tolist() == left


def test_affine_with_no_rotation_or_zoom_is_the_integer_translation():
    images = torch.rand(5, 3, 8, 10) * 2 - 1
    shifts = torch.tensor([[0, 0], [1, 2], [-2, 1], [2, -1], [-1, -2]])
    for padding in ("constant", "edge", "reflect"):
        expected = translate(images, shifts, padding)
        moved = affine(images, torch.zeros(5), torch.ones(5), shifts.float(), padding)
        torch.testing.assert_close(moved, expected, atol=1e-5, rtol=0)


def test_affine_rotates_clockwise_and_zooms_about_the_centre():
    image = torch.arange(25.0).view(1, 1, 5, 5)
    quarter = affine(image, torch.tensor([90.0]), torch.ones(1), torch.zeros(1, 2))
    torch.testing.assert_close(quarter, torch.rot90(image, -1, dims=(-2, -1)), atol=1e-4, rtol=0)
    # zoom 2 about the centre pixel (2, 2): output pixel (y, x) samples (2 + (y-2)/2, 2 + (x-2)/2)
    zoomed = affine(image, torch.zeros(1), torch.full((1,), 2.0), torch.zeros(1, 2))
    assert zoomed[0, 0, 2, 2] == pytest.approx(12.0)
    assert zoomed[0, 0, 0, 0] == pytest.approx(6.0)  # input (1, 1)
    assert zoomed[0, 0, 2, 3] == pytest.approx(12.5)  # halfway between (2, 2) and (2, 3)


def test_flip_mirrors_only_the_chosen_images():
    images = torch.arange(12.0).view(2, 1, 2, 3)
    flipped = flip(images, torch.tensor([True, False]))
    assert flipped[0, 0].tolist() == [[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]
    assert torch.equal(flipped[1], images[1])


# --------------------------------------------------------------------------- the config group
def test_the_group_holds_the_documented_options_and_none_is_the_default(make_cfg):
    assert OPTIONS == ["affine", "flip_translate", "none", "translate"]
    assert make_cfg().augment == make_cfg(["augment=none"]).augment


@pytest.mark.parametrize("name", OPTIONS)
def test_each_option_keeps_shape_dtype_device_and_range(make_cfg, name):
    augment = _augment(make_cfg, name)
    assert augment.active == (name != "none")
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        images = (torch.rand(16, 3, 12, 12) * 2 - 1).to(dtype)
        out = augment(images)
        assert out.shape == images.shape and out.dtype == dtype and out.device == images.device
        assert out.min() >= -1 - 1e-5 and out.max() <= 1 + 1e-5
        assert torch.equal(out, images) == (name == "none")


def test_none_is_the_identity_and_draws_no_random_numbers(make_cfg):
    augment = _augment(make_cfg, "none")
    batch = {"x": torch.rand(4, 1, 8, 8), "y": torch.arange(4), "x_unl": torch.rand(4, 1, 8, 8)}
    state = torch.get_rng_state()
    assert augment(batch["x"]) is batch["x"]
    assert augment.augment_batch(batch) is batch
    assert torch.equal(torch.get_rng_state(), state)


def test_translate_draws_every_shift_within_max_shift(make_cfg):
    augment = _augment(make_cfg, "translate", "augment.max_shift=1")
    image = torch.full((1, 1, 5, 5), -1.0)
    image[0, 0, 2, 2] = 1.0
    out = augment(image.expand(400, 1, 5, 5))
    positions = {tuple(p[2:]) for p in (out == 1.0).nonzero().tolist()}
    assert positions == {(2 + dy, 2 + dx) for dy, dx in itertools.product((-1, 0, 1), repeat=2)}
    assert (out == 1.0).sum() == 400  # exactly one bright pixel per image: never lost at 1 pixel


@pytest.mark.parametrize("unlabeled", [False, True])
def test_labeled_batch_always_augmented_unlabeled_only_when_asked(make_cfg, unlabeled):
    augment = _augment(make_cfg, "translate", f"augment.unlabeled={unlabeled}")
    torch.manual_seed(0)
    batch = {
        "x": torch.rand(32, 1, 8, 8),
        "y": torch.arange(32),
        "x_unl": torch.rand(32, 1, 8, 8),
        "x_unl2": torch.rand(32, 1, 8, 8),
    }
    out = augment.augment_batch(batch)
    assert not torch.equal(out["x"], batch["x"]) and out["y"] is batch["y"]
    for key in ("x_unl", "x_unl2"):
        assert torch.equal(out[key], batch[key]) != unlabeled


@pytest.mark.parametrize(
    "override,match",
    [
        ("augment.max_shift=-1", "max_shift"),
        ("augment.max_shift=1.5", "max_shift"),
        ("augment.padding=wrap", "padding"),
        ("augment.rotate=200", "rotate"),
        ("augment.scale=1.0", "scale"),
    ],
)
def test_bad_settings_are_refused(make_cfg, override, match):
    with pytest.raises(Exception) as info:  # Hydra wraps it; the CLI reports the cause
        _augment(make_cfg, "translate", override)
    cause = gendisc_cause(info.value)
    assert isinstance(cause, ConfigError) and f"augment.{match}=" in str(cause)


def test_reflect_needs_a_shift_below_the_image_size():
    augment = Augment(max_shift=8, padding="reflect")
    with pytest.raises(ConfigError, match=r"augment\.padding=edge"):
        augment(torch.zeros(2, 1, 8, 8))


# ------------------------------------------------------------------------- real training runs
class RecordBatches(Callback):
    """Test helper: saves (to ``path``) the first training batches as the module receives
    them, and every validation and test batch."""

    def __init__(self, path: str, steps: int = 2) -> None:
        self.path, self.steps = path, steps
        self.records: dict[str, list] = {"train": [], "val": [], "test": []}

    def on_train_batch_start(self, trainer: Trainer, module: LightningModule, batch, idx) -> None:
        if len(self.records["train"]) < self.steps:
            self.records["train"].append({k: v.detach().cpu().clone() for k, v in batch.items()})

    def on_validation_batch_start(self, trainer, module, batch, idx, dataloader_idx=0) -> None:
        if not trainer.sanity_checking:
            self.records["val"].append(batch["x"].detach().cpu().clone())

    def on_test_batch_start(self, trainer, module, batch, idx, dataloader_idx=0) -> None:
        self.records["test"].append(batch["x"].detach().cpu().clone())

    def teardown(self, trainer: Trainer, module: LightningModule, stage: str) -> None:
        torch.save(self.records, self.path)


def _recorded_run(make_cfg, name: str, overrides: list[str]) -> tuple[dict, dict]:
    """Train on a tiny budget with RecordBatches; (recorded batches, returned metrics)."""
    cfg = make_cfg(
        [
            *overrides,
            *TINY,
            "+callbacks.record._target_=tests.test_augment.RecordBatches",
            "+callbacks.record.path=batches.pt",  # set below, in the run's directory
        ],
        name=name,
    )
    cfg.callbacks.record.path = str(Path(cfg.paths.output_dir) / "batches.pt")
    metrics = train(cfg)
    return torch.load(cfg.callbacks.record.path, weights_only=True), metrics


def _is_translate_of(augmented: torch.Tensor, plain: torch.Tensor, max_shift: int) -> bool:
    """Whether every augmented image is ``plain``'s image moved by some shift in range."""
    shifts = range(-max_shift, max_shift + 1)
    candidates = torch.stack(
        [
            translate(plain, torch.tensor([[dx, dy]]).expand(len(plain), 2))
            for dx, dy in itertools.product(shifts, shifts)
        ]
    )  # (shifts, N, C, H, W)
    matches = (candidates == augmented.unsqueeze(0)).flatten(2).all(2)  # (shifts, N)
    return bool(matches.any(0).all())


def _assert_evaluation_untouched(records: dict, cfg_overrides: list[str], make_cfg) -> None:
    datamodule, _ = build(make_cfg([*cfg_overrides, *TINY], name="raw"))
    assert torch.equal(torch.cat(records["val"]), to_unit_range(datamodule.val_images))
    assert torch.equal(torch.cat(records["test"]), to_unit_range(datamodule.test_images))


def test_classifier_runs_with_translate_seeded_and_evaluation_untouched(make_cfg):
    base = ["model=classifier"]
    plain, _ = _recorded_run(make_cfg, "none", base)
    augmented, metrics = _recorded_run(make_cfg, "translate", [*base, "augment=translate"])
    again, _ = _recorded_run(make_cfg, "again", [*base, "augment=translate"])
    assert metrics["epochs"] == 1 and "test/acc" in metrics
    assert len(augmented["train"]) == 2
    for step, batch in enumerate(augmented["train"]):
        reference = plain["train"][step]
        assert torch.equal(batch["y"], reference["y"])  # the same labeled images, in order
        assert not torch.equal(batch["x"], reference["x"])
        assert _is_translate_of(batch["x"], reference["x"], max_shift=2)
        assert torch.equal(batch["x"], again["train"][step]["x"])  # same seed, same draws
    _assert_evaluation_untouched(augmented, base, make_cfg)
    assert all(torch.equal(a, b) for a, b in zip(augmented["val"], plain["val"], strict=True))


@pytest.mark.parametrize("unlabeled", [False, True])
def test_ssl_gan_runs_with_translate_on_labeled_and_optionally_unlabeled(make_cfg, unlabeled):
    base = ["model=ssl_gan", "data.batch_size=50"]
    plain, _ = _recorded_run(make_cfg, "none", base)
    augmented, metrics = _recorded_run(
        make_cfg, "translate", [*base, "augment=translate", f"augment.unlabeled={unlabeled}"]
    )
    assert metrics["epochs"] == 1 and "test/acc" in metrics
    for step, batch in enumerate(augmented["train"]):
        reference = plain["train"][step]
        assert batch.keys() == reference.keys() and "x_unl" in batch
        assert _is_translate_of(batch["x"], reference["x"], max_shift=2)
        assert not torch.equal(batch["x"], reference["x"])
        for key in [k for k in batch if k.startswith("x_unl")]:
            assert torch.equal(batch[key], reference[key]) != unlabeled
            assert _is_translate_of(batch[key], reference[key], max_shift=2)
    _assert_evaluation_untouched(augmented, base, make_cfg)


def test_augmented_classifier_runs_with_translate(make_cfg, tiny_cgan_run):
    generator = tiny_cgan_run[0] / "checkpoints" / "last.ckpt"
    base = ["model=augmented_classifier", f"model.generator_ckpt={generator}"]
    plain, _ = _recorded_run(make_cfg, "none", base)
    augmented, metrics = _recorded_run(make_cfg, "translate", [*base, "augment=translate"])
    assert metrics["epochs"] == 1 and "test/acc" in metrics
    for step, batch in enumerate(augmented["train"]):
        assert _is_translate_of(batch["x"], plain["train"][step]["x"], max_shift=2)
        assert not torch.equal(batch["x"], plain["train"][step]["x"])
    _assert_evaluation_untouched(augmented, base, make_cfg)


@pytest.mark.slow
def test_killed_augmented_run_resumes_exactly(tmp_path):
    """The augmentation draws are part of the checkpointed random state: a run killed after an
    epoch and resumed with ``ckpt_path=last`` ends with the metrics of an uninterrupted one."""
    overrides = [
        "model=classifier",
        "augment=affine",
        "data.val_size=100",
        "trainer.max_epochs=3",
        "trainer.limit_train_batches=4",
        "trainer.deterministic=true",
        "seed=5",
    ]
    kill_resume_and_compare(overrides, tmp_path)
