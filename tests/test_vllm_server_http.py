"""The vllm-serve HTTP layer and its client, over real sockets with a fake engine (no vLLM needed).

The real engine behind the same server is exercised in tests/test_vllm_sync.py (marker vllm).
"""
import json
import threading
import time

import pytest
import torch
from safetensors.torch import save_file

from trainer.generation import SamplingParams
from trainer.vllm_backend import VLLMConfig, VLLMGeneration
from trainer.vllm_server import GenerationServer, VLLMServerBackend, VLLMServerError, make_http_server

EOS = 9


class FakeTokenizer:
    eos_token_id = EOS

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 8 for c in text]}

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(str(t) for t in row if not (skip_special_tokens and t == EOS)) for row in rows]


class FakeServer(GenerationServer):
    """Completion i of a prompt is [len(prompt), i, EOS], log-prob -0.5 per token."""

    def engine_generate(self, prompt_ids, n, params, stop_ids):
        ids = [[len(p), i, EOS] for p in prompt_ids for i in range(n)]
        return ids, [False] * len(ids), [[-0.5] * 3 for _ in ids]

    def engine_load(self, items):
        self.loaded = dict(items)
        return 0.0


def model_dir(path, hidden=4):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "fake", "hidden_size": hidden}))
    save_file(torch.nn.Linear(hidden, hidden).state_dict(), str(path / "model.safetensors"))
    return path


def serve(path, port=0):
    server = FakeServer(path, llm=object())
    httpd = make_http_server(server, "127.0.0.1", port)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return server, httpd


@pytest.fixture
def running(tmp_path):
    server, httpd = serve(model_dir(tmp_path / "m"))
    yield tmp_path / "m", server, httpd
    httpd.shutdown()
    httpd.server_close()


def client(path, port, timeout=5.0):
    return VLLMServerBackend(FakeTokenizer(), VLLMConfig(mode="server", server_port=port, server_timeout_s=timeout),
                             max_prompt_length=2, model_dir=path)


def test_generate_returns_completions_and_sampler_logprobs(running):
    path, server, httpd = running
    backend = client(path, httpd.server_address[1])
    assert backend.info["model"] == "m" and backend.info["weights_version"] == 0
    gen = backend.generate(["abc", "d"], 2, SamplingParams(max_new_tokens=3))
    assert isinstance(gen, VLLMGeneration)
    assert gen.completion_ids == [[2, 0, EOS], [2, 1, EOS], [1, 0, EOS], [1, 1, EOS]]  # prompts cut to 2 tokens
    assert gen.texts == ["20", "21", "10", "11"] and gen.logprobs[0] == [-0.5] * 3


def test_weights_are_pushed_with_a_version_and_checked_against_the_served_model(running):
    path, server, httpd = running
    backend = client(path, httpd.server_address[1])
    model = torch.nn.Linear(4, 4)
    backend.update_weights(model)
    backend.update_weights(model)
    assert server.weights_version == 2 and torch.equal(server.loaded["weight"], model.weight)
    assert backend.generate(["a"], 1, SamplingParams(3)).weights_version == 2
    with pytest.raises(VLLMServerError, match=r"answered 400: update_weights: weight '(weight|bias)' has shape \(5"):
        backend.update_weights(torch.nn.Linear(5, 5))


def test_a_server_serving_another_model_is_refused_at_connect(running, tmp_path):
    path, server, httpd = running
    with pytest.raises(VLLMServerError, match="a different architecture from the trainer's model"):
        client(model_dir(tmp_path / "other", hidden=8), httpd.server_address[1])


def test_server_down_is_a_clear_error_within_the_timeout_and_a_restart_is_resumed(tmp_path):
    path = model_dir(tmp_path / "m")
    server, httpd = serve(path)
    port = httpd.server_address[1]
    backend = client(path, port, timeout=1.5)
    model = torch.nn.Linear(4, 4)
    backend.update_weights(model)
    httpd.shutdown()
    httpd.server_close()
    start = time.monotonic()
    with pytest.raises(VLLMServerError, match=r"did not answer POST /generate within vllm.server_timeout_s=1.5 s"
                                              r".*hdc vllm-serve"):
        backend.generate(["a"], 1, SamplingParams(3))
    assert time.monotonic() - start < 3.0
    restarted, httpd = serve(path, port)  # fresh weights from disk, a new instance id
    try:
        gen = backend.generate(["a"], 1, SamplingParams(3))  # the client pushes its weights again first
        assert torch.equal(restarted.loaded["weight"], model.weight)
        assert gen.weights_version == restarted.weights_version == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
