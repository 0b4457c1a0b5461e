"""Models, schedules, configuration and the TF_CONFIG contract (no training)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from cifarflow.errors import InputError
from cifarflow.train import distribute
from cifarflow.train.config import TrainConfig

tf = pytest.importorskip("tensorflow")

from cifarflow.train import model, optim  # noqa: E402

MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
CIFAR = (32, 32, 3)


def cfg(**kw: object) -> TrainConfig:
    return TrainConfig(data="d", out="o", **kw)  # type: ignore[arg-type]


def test_resnet20_is_the_cifar_resnet() -> None:
    m = model.build(cfg(), num_classes=10, mean=MEAN, std=STD, shape=CIFAR)
    # He et al.'s ResNet-20 has 0.27M parameters; 1x1 projection shortcuts add ~3k.
    assert 270_000 < m.count_params() < 280_000
    assert (
        len([layer for layer in m.layers if layer.name.endswith("_conv")]) == 19 + 2
    )  # 19 3x3 + 2 projections
    assert m.input.dtype == "uint8" and tuple(m.output.shape) == (None, 10)


def test_depth_and_width_are_configurable() -> None:
    small = model.build(cfg(depth=8, width=8), num_classes=10, mean=MEAN, std=STD, shape=CIFAR)
    deep = model.build(cfg(depth=32), num_classes=10, mean=MEAN, std=STD, shape=CIFAR)
    assert small.count_params() < 25_000 and deep.count_params() > 280_000
    with pytest.raises(InputError, match="not a CIFAR ResNet depth"):
        cfg(depth=21)


def test_resnet9_builds_and_scales_its_head() -> None:
    m = model.build(cfg(model="resnet9", width=8), num_classes=100, mean=MEAN, std=STD, shape=CIFAR)
    assert tuple(m.output.shape) == (None, 100)
    assert m.get_layer("scale").scale == 0.125


@pytest.mark.parametrize("name", ["resnet20", "resnet9"])
def test_the_input_and_the_stem_follow_the_image_size(name: str) -> None:
    """Up to 64 px the CIFAR stem (the same weights as at 32 px), above it the strided ImageNet stem."""
    small = cfg(model=name, depth=8, width=8)

    def built(shape: tuple[int, int, int]) -> Any:
        return model.build(small, num_classes=5, mean=MEAN, std=STD, shape=shape)

    cifar, at64, at96, wide = built(CIFAR), built((64, 64, 3)), built((96, 96, 3)), built((160, 224, 3))
    for m, shape in ((at64, (64, 64, 3)), (at96, (96, 96, 3)), (wide, (160, 224, 3))):
        assert tuple(m.input.shape) == (None, *shape) and tuple(m.output.shape) == (None, 5)
    stem = "prep" if name == "resnet9" else "stem"
    assert at64.count_params() == cifar.count_params()
    assert at64.get_layer(f"{stem}_conv").kernel.shape[:2] == (3, 3)
    assert at64.get_layer(f"{stem}_conv").strides == (1, 1)
    for m in (at96, wide):
        conv = m.get_layer(f"{stem}_conv")
        assert conv.kernel.shape[:2] == (7, 7) and conv.strides == (2, 2)
        # /4 before the first stage: a 96 px image enters it at 24 px, as a 224 px one does at 56.
        assert tuple(m.get_layer(f"{stem}_pool").output.shape[1:3]) == (
            m.input.shape[1] // 4,
            m.input.shape[2] // 4,
        )
    out = wide(tf.zeros([2, 160, 224, 3], tf.uint8), training=False)
    assert tuple(out.shape) == (2, 5)
    # The stem is part of what a checkpoint must match; the CIFAR one keeps the fingerprints of older runs.
    assert "stem" not in small.architecture(5, (64, 64))
    assert small.architecture(5, (96, 96))["stem"] == "imagenet"
    assert small.fingerprint(5, (32, 32)) != small.fingerprint(5, (224, 224))


def test_standardize_is_the_dataset_normalisation() -> None:
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    out = model.Standardize(MEAN, STD)(tf.constant(images)).numpy()
    expected = (images / 255.0 - np.array(MEAN)) / np.array(STD)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_mixed_precision_computes_in_float16_and_answers_in_float32() -> None:
    m = model.build(cfg(depth=8, width=8), num_classes=10, mean=MEAN, std=STD, shape=CIFAR, mixed=True)
    assert m.get_layer("stem_conv").compute_dtype == "float16"
    assert m.get_layer("stem_conv").variable_dtype == "float32"
    out = m(tf.zeros([2, 32, 32, 3], tf.uint8))
    assert out.dtype == tf.float32


def test_mixed_bfloat16_computes_in_bfloat16_without_loss_scaling() -> None:
    c = cfg(depth=8, width=8, mixed_type="bfloat16")
    m = model.build(c, num_classes=10, mean=MEAN, std=STD, shape=CIFAR, mixed=True)
    assert m.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert m.get_layer("stem_conv").variable_dtype == "float32"
    assert m(tf.zeros([2, 32, 32, 3], tf.uint8)).dtype == tf.float32
    assert not hasattr(optim.optimizer(c, 10, mixed=True), "inner_optimizer")  # bfloat16 needs no scaling
    assert hasattr(optim.optimizer(cfg(), 10, mixed=True), "inner_optimizer")  # float16 does


@pytest.mark.parametrize("kind", ["onecycle", "cosine"])
def test_schedules_warm_up_peak_and_anneal(kind: str) -> None:
    sched = optim.schedule(cfg(schedule=kind, lr=0.4, warmup=0.2), total_steps=100)
    lrs = np.array([float(sched(step)) for step in range(100)])
    assert lrs[0] < 0.05 and abs(lrs.max() - 0.4) < 1e-6 and 17 <= lrs.argmax() <= 21
    assert lrs[-1] < 0.02 and np.all(np.diff(lrs[25:]) <= 1e-7)


def test_learning_rate_scales_with_the_global_batch() -> None:
    assert cfg(batch_size=512).peak_lr == pytest.approx(0.4)
    assert cfg(batch_size=512, lr=0.05).peak_lr == 0.05


def test_weight_decay_skips_batchnorm_and_biases() -> None:
    m = model.build(cfg(depth=8, width=8), num_classes=10, mean=MEAN, std=STD, shape=CIFAR)
    opt = optim.optimizer(cfg(), 10)
    opt.build(m.trainable_variables)
    decayed = {v.path.split("/")[-1] for v in m.trainable_variables if opt._use_weight_decay(v)}
    assert decayed == {"kernel"}


# -- TF_CONFIG as a TFJob injects it ------------------------------------------------------------------------


def tfjob(cluster: dict[str, list[str]], task_type: str, index: int) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_no_tf_config_is_one_local_chief() -> None:
    role = distribute.role_from_env({})
    assert role.is_chief and not role.multi_worker and role.rank == 0


def test_workers_only_make_worker_0_the_chief() -> None:
    cluster = {"worker": ["w-0:2222", "w-1:2222", "w-2:2222"]}
    roles = [distribute.role_from_env(tfjob(cluster, "worker", i)) for i in range(3)]
    assert [r.is_chief for r in roles] == [True, False, False]
    assert [r.rank for r in roles] == [0, 1, 2] and all(r.num_workers == 3 for r in roles)


def test_a_chief_replica_is_the_chief_and_trains_too() -> None:
    cluster = {"chief": ["c-0:2222"], "worker": ["w-0:2222", "w-1:2222"]}
    chief = distribute.role_from_env(tfjob(cluster, "chief", 0))
    worker0 = distribute.role_from_env(tfjob(cluster, "worker", 0))
    assert chief.is_chief and chief.rank == 0 and chief.num_workers == 3
    assert not worker0.is_chief and worker0.rank == 1


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid JSON"),
        (tfjob({"worker": ["a:1"], "ps": ["p:1"]}, "worker", 0), "parameter servers"),
        (tfjob({"worker": ["a:1"], "evaluator": ["e:1"]}, "evaluator", 0), "does not train"),
        (tfjob({"worker": ["a:1", "b:1"]}, "worker", 2), "is not in its cluster"),
    ],
)
def test_tf_config_this_trainer_cannot_run_is_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        distribute.role_from_env(env)
