"""The language-model engine on a GPU, side by side with its baselines (issue 20).

Run on the device machine, which has torch and transformers but none of our other
dependencies and no network, so this script needs only those two:

    python bench/llm_gpu.py [--streams 1 8 32 128] [--tokens 128] [--dtype bf16]

It measures, on one model of SmolLM2-135M's shape (random weights: the weights are not
carried, and throughput does not depend on their values; every sequence runs to its
max_tokens because end-of-sequence is off):
  (a) `generate` one request at a time,
  (b) static batching: all requests in one left-padded `generate`,
  (c) the replica's engine settings: transformers' continuous batching
      (`ContinuousBatchingManager`, paged KV cache, per-request sampling processors),
      requests added at once and streamed back,
and prints output tokens/s per concurrency and the ratios c/a and c/b. vLLM, the issue's
GPU comparison, is not in that machine's image and its wheel is beyond what a run may
carry, so it is not measured.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
from transformers.generation.configuration_utils import ContinuousBatchingConfig

SMOLLM2_135M: dict[str, Any] = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "tie_word_embeddings": True,
}
PROMPT_TOKENS = 40


def prompts(count: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(0)
    return [
        torch.randint(3, 49000, (PROMPT_TOKENS + i % 7,), generator=generator).tolist()
        for i in range(count)
    ]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


@torch.no_grad()
def one_at_a_time(model: Any, inputs: list[list[int]], tokens: int) -> float:
    started = time.perf_counter()
    for ids in inputs:
        x = torch.tensor([ids], device=model.device)
        model.generate(
            x, attention_mask=torch.ones_like(x), max_new_tokens=tokens, min_new_tokens=tokens
        )
    sync()
    return len(inputs) * tokens / (time.perf_counter() - started)


@torch.no_grad()
def static(model: Any, inputs: list[list[int]], tokens: int) -> float:
    width = max(len(i) for i in inputs)
    ids = torch.zeros((len(inputs), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, each in enumerate(inputs):
        ids[row, width - len(each) :] = torch.tensor(each)
        mask[row, width - len(each) :] = 1
    started = time.perf_counter()
    model.generate(
        ids.to(model.device),
        attention_mask=mask.to(model.device),
        max_new_tokens=tokens,
        min_new_tokens=tokens,
    )
    sync()
    return len(inputs) * tokens / (time.perf_counter() - started)


def continuous(manager: object, inputs: list[list[int]], tokens: int) -> float:
    started = time.perf_counter()
    ids = [
        manager.add_request(i, max_new_tokens=tokens, streaming=True, temperature=1e-6, top_p=1.0)  # type: ignore[attr-defined]
        for i in inputs
    ]
    done: set[str] = set()
    generated = 0
    while len(done) < len(ids):
        result = manager.get_result(timeout=5)  # type: ignore[attr-defined]
        if result is not None and result.is_finished():
            done.add(result.request_id)
            generated += len(result.generated_tokens)
    return generated / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    torch.manual_seed(0)
    config = LlamaConfig(**SMOLLM2_135M, eos_token_id=-1, pad_token_id=0)
    model: Any = LlamaForCausalLM(config)
    model = model.to(device=device, dtype=dtype).eval()
    model.generation_config = GenerationConfig(do_sample=False, eos_token_id=-1, pad_token_id=0)  # type: ignore[no-untyped-call]
    kv_tokens = max(args.streams) * (PROMPT_TOKENS + 8 + args.tokens) * 2
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(  # type: ignore[no-untyped-call]
            max_new_tokens=args.tokens,
            do_sample=True,
            temperature=0.7,
            top_p=0.95,
            eos_token_id=-1,
            pad_token_id=0,
        ),
        continuous_batching_config=ContinuousBatchingConfig(
            page_size=64,
            num_blocks=math.ceil(kv_tokens / 64),
            max_batch_tokens=2048,
            max_requests_per_batch=max(args.streams),
            per_request_processors=True,
        ),
    )
    manager.start()
    continuous(manager, prompts(4), 8)  # warm-up
    static(model, prompts(4), 8)
    rows = []
    for streams in args.streams:
        inputs = prompts(streams)
        row = {
            "streams": streams,
            "continuous": continuous(manager, inputs, args.tokens),
            "static": static(model, inputs, args.tokens),
            # one at a time does not depend on the concurrency: measured on at most 8
            "one_at_a_time": one_at_a_time(model, inputs[:8], args.tokens),
        }
        row["vs_one_at_a_time"] = row["continuous"] / row["one_at_a_time"]
        row["vs_static"] = row["continuous"] / row["static"]
        rows.append(row)
        print(json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
    manager.stop(block=True, timeout=10)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    print(f"\n{name}, {args.dtype}, {args.tokens} new tokens, prompts ~{PROMPT_TOKENS} tokens")
    print("| streams | (c) continuous tok/s | (b) static | (a) one at a time | c/a | c/b |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']} | {r['continuous']:.0f} | {r['static']:.0f} | "
            f"{r['one_at_a_time']:.0f} | {r['vs_one_at_a_time']:.1f}x | {r['vs_static']:.2f}x |"
        )


if __name__ == "__main__":
    main()
