"""Every input a user can get wrong ends in one readable line and a non-zero exit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from tests.conftest import CHECKPOINT, run_cli


def _fails_with(capsys: pytest.CaptureFixture[str], argv: list[str], expected: str) -> None:
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1
    assert "Traceback" not in err
    assert [line for line in lines if line.startswith("dolphin-desk: error: ")] == lines[-1:], lines
    assert expected in lines[-1], lines[-1]


@pytest.fixture
def checkpoint_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(CHECKPOINT, tmp_path / "ckpt"))


@pytest.fixture
def context_file(tmp_path: Path) -> Path:
    path = tmp_path / "context.txt"
    path.write_text("The lighthouse keeper kept a log of every ship.", encoding="utf-8")
    return path


def test_convert_rejects_a_folder_that_is_not_dolphin(tmp_path, capsys) -> None:
    source = tmp_path / "qwen"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]}))
    _fails_with(capsys, ["convert", str(source), str(tmp_path / "out")], "is not a Dolphin checkpoint")


def test_convert_rejects_a_missing_source(tmp_path, capsys) -> None:
    _fails_with(capsys, ["convert", str(tmp_path / "nowhere"), str(tmp_path / "out")], "does not exist")


def test_convert_names_a_missing_shard(checkpoint_copy, tmp_path, capsys) -> None:
    (checkpoint_copy / "model-00003-of-00004.safetensors").unlink()
    _fails_with(
        capsys, ["convert", str(checkpoint_copy), str(tmp_path / "out")], "model-00003-of-00004.safetensors is missing"
    )
    assert not (tmp_path / "out").exists()


def test_convert_detects_a_truncated_shard(checkpoint_copy, tmp_path, capsys) -> None:
    shard = checkpoint_copy / "model-00002-of-00004.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    _fails_with(
        capsys,
        ["convert", str(checkpoint_copy), str(tmp_path / "out")],
        "model-00002-of-00004.safetensors is truncated",
    )


def test_convert_detects_a_garbage_shard(checkpoint_copy, tmp_path, capsys) -> None:
    (checkpoint_copy / "model-00001-of-00004.safetensors").write_bytes(b"<html>502 Bad Gateway</html>")
    _fails_with(capsys, ["convert", str(checkpoint_copy), str(tmp_path / "out")], "is not a safetensors file")


def test_convert_refuses_to_overwrite_without_force(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    _fails_with(capsys, ["convert", str(CHECKPOINT), str(out)], "already exists")
    assert (out / "keep.txt").read_text() == "user data"


def test_bundle_with_a_missing_file(bundle_copy, context_file, tmp_path, capsys) -> None:
    (bundle_copy / "decoder" / "model.onnx.data").unlink()
    _fails_with(
        capsys,
        ["ask", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--question", "Who?"],
        "decoder/model.onnx.data is missing",
    )


def test_bundle_with_a_truncated_file(bundle_copy, context_file, tmp_path, capsys) -> None:
    target = bundle_copy / "encoder" / "model.onnx.data"
    target.write_bytes(target.read_bytes()[:1000])
    _fails_with(
        capsys,
        ["encode", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--out", str(tmp_path / "m.npy")],
        "encoder/model.onnx.data is corrupt",
    )


def test_bundle_with_a_scrambled_file_of_the_right_size(bundle_copy, context_file, tmp_path, capsys) -> None:
    target = bundle_copy / "decoder" / "model.onnx"
    target.write_bytes(bytes(255 - b for b in target.read_bytes()))
    _fails_with(
        capsys,
        ["ask", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--question", "Who?"],
        "cannot load",
    )


def test_bundle_of_a_newer_format(bundle_copy, context_file, tmp_path, capsys) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    _fails_with(
        capsys,
        ["ask", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--question", "Who?"],
        "update Dolphin Desk",
    )


def test_bundle_with_a_corrupt_manifest(bundle_copy, context_file, capsys) -> None:
    (bundle_copy / "manifest.json").write_text('{"format_version": 1, "memory_si')
    _fails_with(
        capsys,
        ["ask", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--question", "Who?"],
        "manifest.json is corrupt",
    )


def test_bundle_for_another_provider(bundle_copy, context_file, capsys) -> None:
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["provider"] = "dml"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    _fails_with(
        capsys,
        ["ask", "--bundle", str(bundle_copy), "--context-file", str(context_file), "--question", "Who?"],
        "DirectML",
    )


def test_not_a_bundle(tmp_path, context_file, capsys) -> None:
    _fails_with(
        capsys,
        ["ask", "--bundle", str(tmp_path), "--context-file", str(context_file), "--question", "Who?"],
        "not a Dolphin Desk model bundle",
    )


def test_empty_context(fp32_bundle, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n", encoding="utf-8")
    _fails_with(
        capsys,
        ["ask", "--bundle", str(fp32_bundle), "--context-file", str(empty), "--question", "Who?"],
        "context is empty",
    )


def test_context_of_only_reserved_strings_is_empty(fp32_bundle, tmp_path, capsys) -> None:
    path = tmp_path / "eos.txt"
    path.write_text("<|endoftext|>", encoding="utf-8")
    _fails_with(
        capsys,
        ["encode", "--bundle", str(fp32_bundle), "--context-file", str(path), "--out", str(tmp_path / "m.npy")],
        "context is empty",
    )


def test_missing_context_file(fp32_bundle, tmp_path, capsys) -> None:
    _fails_with(
        capsys,
        ["ask", "--bundle", str(fp32_bundle), "--context-file", str(tmp_path / "no.txt"), "--question", "Who?"],
        "No such file or directory",
    )


def test_context_file_that_is_not_text(fp32_bundle, tmp_path, capsys) -> None:
    path = tmp_path / "binary.txt"
    path.write_bytes(b"\xff\xfe\x00\x81 not utf-8")
    _fails_with(
        capsys,
        ["ask", "--bundle", str(fp32_bundle), "--context-file", str(path), "--question", "Who?"],
        "is not UTF-8 text",
    )


def test_empty_question(fp32_bundle, context_file, capsys) -> None:
    _fails_with(
        capsys,
        ["ask", "--bundle", str(fp32_bundle), "--context-file", str(context_file), "--question", " "],
        "question is empty",
    )


def test_long_context_is_truncated_and_the_user_is_told(fp32_bundle, fp32_model, tmp_path, capsys) -> None:
    limit = fp32_model.manifest.max_context_tokens
    words = "the keeper climbed the tower with a lantern " * 200
    path = tmp_path / "long.txt"
    path.write_text(words, encoding="utf-8")
    out = tmp_path / "m.npy"
    assert main(["encode", "--bundle", str(fp32_bundle), "--context-file", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"truncated to the first {limit}" in err
    ids = fp32_model.tokenizer.encode(words)[:limit]
    expected = fp32_model.project([fp32_model.encode(fp32_model.tokenizer.decode(ids))])[0]
    np.testing.assert_allclose(np.load(out), expected, atol=1e-5)


def test_endoftext_in_user_text_is_removed_and_reported(fp32_bundle, fp32_model, tmp_path, capsys) -> None:
    """The reference would end the memory at <|endoftext|>; we remove it and say so."""
    path = tmp_path / "eos.txt"
    path.write_text("before<|endoftext|> after", encoding="utf-8")
    out = tmp_path / "m.npy"
    assert main(["encode", "--bundle", str(fp32_bundle), "--context-file", str(path), "--out", str(out)]) == 0
    assert "removed 1 reserved token string(s) (<|endoftext|>)" in capsys.readouterr().err
    expected = fp32_model.project([fp32_model.encode("before after")])[0]
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_errors_from_a_real_process_have_no_traceback(tmp_path) -> None:
    result = run_cli("ask", "--bundle", str(tmp_path / "missing"), "--context-file", "x.txt", "--question", "q")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("dolphin-desk: error: ")


def test_hub_ids_offline_are_a_clear_error(tmp_path) -> None:
    import os

    env_before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        result = run_cli("convert", "NexaAIDev/Squid", str(tmp_path / "out"))
        download = run_cli("download", "NexaAIDev/Squid", str(tmp_path / "ckpt"))
    finally:
        if env_before is None:
            os.environ.pop("HF_HUB_OFFLINE")
        else:
            os.environ["HF_HUB_OFFLINE"] = env_before
    for outcome in (result, download):
        assert outcome.returncode == 1
        assert "Traceback" not in outcome.stderr
        assert outcome.stderr.strip().splitlines()[-1].startswith("dolphin-desk: error: ")
    assert "could not download NexaAIDev/Squid" in result.stderr
    assert "offline" in download.stderr


def test_an_unreachable_hub_says_you_appear_to_be_offline(tmp_path) -> None:
    """What an unplugged laptop gets: the hub's address refuses the connection (a closed local port
    here, so the test neither waits for timeouts nor depends on this machine's DNS)."""
    import os

    saved = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_HUB_OFFLINE")}
    os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
    os.environ.pop("HF_HUB_OFFLINE", None)
    try:
        download = run_cli("download", "NexaAIDev/Squid", str(tmp_path / "ckpt"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert download.returncode == 1 and "Traceback" not in download.stderr
    assert "you appear to be offline" in download.stderr
