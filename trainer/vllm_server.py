"""`hdc vllm-serve`: a vLLM engine behind a small HTTP server, and the trainer's client for it.

    hdc vllm-serve --model runs/tiny-sft --port 8000          # terminal 1 (or another machine)
    hdc train recipes/tiny-arith.yaml --set generation.backend=vllm --set vllm.mode=server   # terminal 2

Endpoints (JSON unless said otherwise):
    GET  /health          {"status", "model", "model_dir", "fingerprint", "weights_version", "instance_id", ...}
    POST /generate        {"prompt_token_ids", "n", "max_new_tokens", "temperature", "top_p", "top_k", "min_p",
                           "repetition_penalty", "stop_token_ids",
                           "expect": {"instance_id", "weights_version"}?}
                          -> {"completion_ids", "truncated", "logprobs", "weights_version", "instance_id"};
                          409 when "expect" does not match (the server restarted or missed a push)
    POST /score           {"prompt_token_ids", "completion_ids"} -> {"logprobs"}: the engine's log-probs
                          (temperature 1) of fixed completions, to check a weight sync
    POST /update_weights  body: a safetensors file of the state dict (application/octet-stream),
                          header X-Weights-Version: N -> {"weights_version", "seconds", "tensors"}
The client tokenizes and decodes with the trainer's tokenizer, so both sides agree on token ids.
The server is its own process: it outlives trainer restarts, and a client that finds a restarted
server (new instance_id) pushes its weights again before generating.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hdc.errors import UserError

log = logging.getLogger(__name__)
ARCH_KEYS = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "intermediate_size", "vocab_size", "tie_word_embeddings")


class VLLMServerError(UserError, RuntimeError):
    """The generation server is down, timed out, refused a request, or serves another model."""


def model_fingerprint(model_dir: str | Path) -> str:
    """A short hash of the architecture fields of config.json: equal for a model and its fine-tunes."""
    try:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    arch = {k: cfg.get(k) for k in ARCH_KEYS}
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- server
class GenerationServer:
    """The engine and its state; the HTTP handler calls these methods one at a time (a lock)."""

    def __init__(self, model_dir: str | Path, cfg=None, seed: int = 0, llm=None):
        from trainer.vllm_backend import VLLMConfig, build_llm, checkpoint_shapes

        self.model_dir = Path(model_dir).resolve()
        self.cfg = cfg or VLLMConfig()
        self.llm = llm if llm is not None else build_llm(self.model_dir, self.cfg, seed=seed, in_process=True)
        self.expected = checkpoint_shapes(self.model_dir)
        self.fingerprint = model_fingerprint(self.model_dir)
        self.instance_id = uuid.uuid4().hex[:12]
        self.weights_version = 0
        self.started = time.time()
        self.lock = threading.Lock()

    def health(self) -> dict:
        return {"status": "ok", "model": self.model_dir.name, "model_dir": str(self.model_dir),
                "fingerprint": self.fingerprint, "weights_version": self.weights_version,
                "instance_id": self.instance_id, "uptime_s": round(time.time() - self.started, 1)}

    # The two engine calls, apart so that tests can serve a fake engine over the real HTTP layer.
    def engine_generate(self, prompt_ids, n, params, stop_ids):
        from trainer.vllm_backend import generate_ids

        return generate_ids(self.llm, prompt_ids, n, params, stop_ids)

    def engine_load(self, items) -> float:
        from trainer.vllm_backend import load_weights_into

        return load_weights_into(self.llm, items, self.expected)

    def generate(self, body: dict) -> tuple[int, dict]:
        from trainer.generation import SamplingParams

        expect = body.get("expect")
        with self.lock:
            if expect and (expect.get("instance_id") != self.instance_id
                           or expect.get("weights_version") != self.weights_version):
                return 409, {"error": "weights out of date", **self.health()}
            params = SamplingParams(int(body["max_new_tokens"]), float(body.get("temperature", 1.0)),
                                    float(body.get("top_p", 1.0)), top_k=int(body.get("top_k", 0)),
                                    min_p=body.get("min_p"),
                                    repetition_penalty=float(body.get("repetition_penalty", 1.0)))
            ids, truncated, logprobs = self.engine_generate(body["prompt_token_ids"], int(body.get("n", 1)),
                                                            params, set(body.get("stop_token_ids") or []))
            return 200, {"completion_ids": ids, "truncated": truncated, "logprobs": logprobs,
                         "weights_version": self.weights_version, "instance_id": self.instance_id}

    def score(self, body: dict) -> tuple[int, dict]:
        from trainer.vllm_backend import score_ids

        with self.lock:
            return 200, {"logprobs": score_ids(self.llm, body["prompt_token_ids"], body["completion_ids"]),
                         "weights_version": self.weights_version}

    def update_weights(self, payload: bytes, version: int | None) -> tuple[int, dict]:
        from trainer.vllm_backend import check_weights
        from trainer.vllm_worker import decode_weights

        try:
            items = decode_weights(payload)
        except Exception as e:  # not a safetensors file
            return 400, {"error": f"body is not a safetensors state dict: {e}"}
        with self.lock:
            try:
                check_weights(items, self.expected, "update_weights")  # before touching the engine
                seconds = self.engine_load(items)
            except UserError as e:
                return 400, {"error": str(e)}
            self.weights_version = version if version is not None else self.weights_version + 1
            return 200, {"weights_version": self.weights_version, "seconds": seconds, "tensors": len(items),
                         "instance_id": self.instance_id}


def make_http_server(server: GenerationServer, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/health":
                return self._send(200, server.health())
            self._send(404, {"error": f"no endpoint {self.path}; try /health, /generate, /score, /update_weights"})

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if self.path == "/generate":
                    return self._send(*server.generate(json.loads(body)))
                if self.path == "/score":
                    return self._send(*server.score(json.loads(body)))
                if self.path == "/update_weights":
                    version = self.headers.get("X-Weights-Version")
                    return self._send(*server.update_weights(body, int(version) if version else None))
                self._send(404, {"error": f"no endpoint {self.path}"})
            except (KeyError, ValueError, TypeError) as e:
                self._send(400, {"error": f"bad request: {type(e).__name__}: {e}"})
            except Exception as e:  # the engine itself failed (e.g. EngineDeadError): say so, keep serving
                log.exception("engine error")
                self._send(500, {"error": f"engine error ({type(e).__name__}: {e}); restart hdc vllm-serve"})

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

    httpd = ThreadingHTTPServer((host, port), Handler)
    httpd.daemon_threads = True
    return httpd


# --------------------------------------------------------------------------- client
class VLLMServerBackend:
    """GenerationBackend talking to `hdc vllm-serve`: generate and push weights over HTTP."""

    def __init__(self, tokenizer, cfg=None, max_prompt_length: int | None = None, model_dir: str | Path | None = None,
                 seed: int = 0):
        from trainer.vllm_backend import VLLMConfig, eos_ids_of

        self.cfg = cfg or VLLMConfig()
        self.url = f"http://{self.cfg.server_host}:{self.cfg.server_port}"
        self.tokenizer, self.max_prompt_length = tokenizer, max_prompt_length
        self.eos_ids = eos_ids_of(tokenizer)
        self.model = None             # the last model pushed, to push again after a server restart
        self.expect: dict | None = None
        self.weights_version = 0
        self.last_sync_s = 0.0
        self.info = self._request("GET", "/health")  # waits up to server_timeout_s for the server to come up
        if model_dir is not None:
            mine = model_fingerprint(model_dir)
            if mine and self.info.get("fingerprint") and mine != self.info["fingerprint"]:
                raise VLLMServerError(
                    f"vllm server at {self.url} serves {self.info.get('model_dir')}, a different architecture "
                    f"from the trainer's model {model_dir}: restart it with `hdc vllm-serve --model {model_dir} "
                    f"--port {self.cfg.server_port}`")
        log.info("vllm server %s: model %s, weights version %s", self.url, self.info.get("model"),
                 self.info.get("weights_version"))

    def generate(self, prompts, n, params):
        from trainer.vllm_backend import VLLMGeneration, tokenize_prompts

        body = {"prompt_token_ids": tokenize_prompts(self.tokenizer, prompts, self.max_prompt_length), "n": n,
                "max_new_tokens": params.max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
                "top_k": params.top_k, "min_p": params.min_p, "repetition_penalty": params.repetition_penalty,
                "stop_token_ids": sorted(self.eos_ids), "expect": self.expect}
        out = self._request("POST", "/generate", json.dumps(body).encode(), allow_conflict=self.model is not None)
        if out.get("_conflict"):  # restarted server (fresh weights from disk): push ours again, then generate
            log.warning("vllm server %s restarted or missed a push; pushing weights version %d again",
                        self.url, self.weights_version)
            self._push(self.model)
            out = self._request("POST", "/generate", json.dumps({**body, "expect": self.expect}).encode())
        texts = self.tokenizer.batch_decode(out["completion_ids"], skip_special_tokens=True)
        return VLLMGeneration(completion_ids=out["completion_ids"], texts=texts, truncated=out["truncated"],
                              logprobs=out["logprobs"], weights_version=out["weights_version"])

    def score(self, prompts: list[str], completion_ids: list[list[int]]) -> list[list[float]]:
        """The server's log-probs (temperature 1) of fixed completions, one prompt per completion."""
        from trainer.vllm_backend import tokenize_prompts

        body = {"prompt_token_ids": tokenize_prompts(self.tokenizer, prompts, self.max_prompt_length),
                "completion_ids": completion_ids}
        return self._request("POST", "/score", json.dumps(body).encode())["logprobs"]

    def update_weights(self, model) -> None:
        self.model = model
        self.weights_version += 1
        self._push(model)

    def _push(self, model) -> None:
        import torch

        from trainer.vllm_backend import state_dict_bytes

        dtype = None if self.cfg.dtype == "auto" else getattr(torch, self.cfg.dtype)
        start = time.perf_counter()
        out = self._request("POST", "/update_weights", state_dict_bytes(model, dtype),
                            headers={"Content-Type": "application/octet-stream",
                                     "X-Weights-Version": str(self.weights_version)})
        self.last_sync_s = time.perf_counter() - start
        self.expect = {"instance_id": out["instance_id"], "weights_version": out["weights_version"]}

    def _request(self, method: str, path: str, data: bytes | None = None, headers: dict | None = None,
                 allow_conflict: bool = False) -> dict:
        """One request; retries while the server is unreachable, up to server_timeout_s in all."""
        timeout = self.cfg.server_timeout_s
        deadline = time.monotonic() + timeout
        last = None
        while True:
            left = deadline - time.monotonic()
            req = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers=headers or {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=max(left, 0.1)) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as e:
                detail = _error_text(e)
                if e.code == 409 and allow_conflict:
                    return {"_conflict": True}
                raise VLLMServerError(f"vllm server {self.url}{path} answered {e.code}: {detail}") from None
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = getattr(e, "reason", e)
                if isinstance(last, TimeoutError) or time.monotonic() + 0.5 >= deadline:
                    break
                time.sleep(0.5)
        raise VLLMServerError(
            f"vllm server {self.url} did not answer {method} {path} within vllm.server_timeout_s={timeout:g} s "
            f"({type(last).__name__}: {last}). Is it running? Start it with `hdc vllm-serve --model MODEL_DIR "
            f"--host {self.cfg.server_host} --port {self.cfg.server_port}`")


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        return json.loads(e.read()).get("error", "")
    except Exception:
        return e.reason or ""


# --------------------------------------------------------------------------- `hdc vllm-serve`
def register(subparsers) -> None:
    p = subparsers.add_parser("vllm-serve", help="Serve a model with vLLM for `generation.backend: vllm`, "
                              "`vllm.mode: server`.", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model directory saved with save_pretrained")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all interfaces)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs to shard the engine over")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="fraction of GPU memory for vLLM")
    p.add_argument("--dtype", default="float32", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--kv-cache-space-gib", type=float, default=1.0, help="CPU only: KV cache size (GiB)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_vllm_serve)


def cmd_vllm_serve(args) -> int:
    from trainer.models import require_model_dir
    from trainer.vllm_backend import VLLMConfig

    cfg = VLLMConfig(mode="server", tensor_parallel_size=args.tensor_parallel_size, enable_sleep_mode=False,
                     gpu_memory_utilization=args.gpu_memory_utilization, dtype=args.dtype,
                     kv_cache_space_gib=args.kv_cache_space_gib, server_host=args.host, server_port=args.port)
    require_model_dir(args.model, "--model")
    server = GenerationServer(args.model, cfg, seed=args.seed)
    try:
        httpd = make_http_server(server, args.host, args.port)
    except OSError as e:
        raise UserError(f"--port: cannot listen on {args.host}:{args.port} ({e.strerror})") from None
    print(f"vllm-serve: {server.model_dir} on http://{args.host}:{args.port} (instance {server.instance_id})",
          flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.vllm_server --model DIR ...`: the same command without the rest of `hdc`."""
    parser = argparse.ArgumentParser(prog="hdc")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(["vllm-serve", *(argv if argv is not None else sys.argv[1:])])
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
