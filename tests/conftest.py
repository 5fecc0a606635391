import numpy as np
import pytest
import torch
import yaml


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """A folder holding a tiny random unified model (unified/), saved as a real checkpoint."""
    root = tmp_path_factory.mktemp("tiny-models")
    torch.manual_seed(0)
    tiny_unified().save(root / "unified")
    return root


def tiny_unified():
    """A tiny random unified model (the embedded default's architecture, scaled down)."""
    from model.unified.config import LMConfig, UnifiedConfig, VQConfig
    from model.unified.train import build_untrained

    return build_untrained(UnifiedConfig(
        vq=VQConfig(block_out_channels=(8, 8, 8, 8), latent_channels=8, num_codes=32, vq_embed_dim=4),
        lm=LMConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)))


@pytest.fixture(scope="session")
def tiny_image_model(tiny_models):
    """The tiny unified model behind the generator and editor roles."""
    from model.unified.backend import UnifiedRoles
    from model.unified.config import UnifiedBackendConfig

    return UnifiedRoles(UnifiedBackendConfig(path=str(tiny_models / "unified")))


@pytest.fixture(scope="session")
def tiny_run_config(tiny_models):
    """A run config YAML on the tiny models: one revision at most, small batches."""
    cfg = {"concurrency": 4, "max_batch": 4, "stop": {"max_rounds": 1},
           "models": {"image": {"path": str(tiny_models / "unified")},
                      "critic": {"path": str(tiny_models / "unified")}}}
    path = tiny_models / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def llava_folder(tmp_path_factory):
    """A tiny random LLaVA (tests/test_backends.py's builder) saved to a temp folder."""
    from tests.tiny_checkpoints import llava

    return llava(tmp_path_factory.mktemp("served") / "llava")


@pytest.fixture(scope="session")
def served_llava(llava_folder, tmp_path_factory):
    """The /v1 URL of a real `transformers serve` on `llava_folder` (tests/served_server.py)."""
    from tests.served_server import transformers_serve

    with transformers_serve(llava_folder, tmp_path_factory.mktemp("serve-log") / "serve.log") as url:
        yield url


@pytest.fixture(scope="session")
def loop_run(tiny_run_config, tmp_path_factory):
    """A real run of the loop on the tiny unified model (its rounds judged by the verifier)."""
    from typer.testing import CliRunner

    from agent.cli import app

    out = tmp_path_factory.mktemp("loop") / "run"
    result = CliRunner().invoke(app, ["run", "a red circle", "two blue squares", "--config", str(tiny_run_config),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out
