"""Minibatch discrimination's eval-mode reference batch, set at fit start by every module."""

from __future__ import annotations

import lightning as L
import torch

from gendisc.data.batches import to_unit_range
from gendisc.utils.build import build


def _fit(model, datamodule, steps: int = 2) -> None:
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)


def test_classifier_with_minibatch_discrimination_takes_its_reference_from_the_labels(make_cfg):
    cfg = make_cfg(
        [
            "model=classifier",
            "model/net=salimans_mlp",
            "model.net.minibatch_discrimination={reference_size:50}",
            "data.labels_per_class=3",
        ]
    )
    datamodule, model = build(cfg)
    assert not model.net.has_minibatch_reference()
    _fit(model, datamodule)
    net = model.net
    assert net.has_minibatch_reference()
    reference = net.minibatch_disc.reference
    assert reference.shape[0] == 50
    # every reference image is one of the 30 labeled images (tiled: the set is smaller)
    labeled = to_unit_range(datamodule.train_images[datamodule.labeled_index]).flatten(1)
    distances = torch.cdist(reference.flatten(1), labeled)
    assert torch.all(distances.min(dim=1).values < 0.05)  # cdist rounding; others are > 1 away
    assert len(labeled) == 30
    # evaluation no longer depends on which test images share a batch
    x = to_unit_range(datamodule.test_images[:64])
    model.eval()
    with torch.no_grad():
        whole = model(x)
        for size in (1, 7, 32):
            chunked = torch.cat([model(part) for part in x.split(size)])
            torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-4)


def test_restored_reference_is_kept(make_cfg):
    cfg = make_cfg(
        [
            "model=classifier",
            "model/net=salimans_mlp",
            "model.net.minibatch_discrimination={reference_size:20}",
        ]
    )
    datamodule, model = build(cfg)
    marker = torch.full((20, *model.net.in_shape), 0.25)
    model.net.set_minibatch_reference(marker)
    _fit(model, datamodule, steps=1)
    torch.testing.assert_close(model.net.minibatch_disc.reference, marker)
