"""CUDA checks for a machine with a GPU; prints JSON (one object per check). Run from the repo root:

    python benchmarks/gpu_check.py [NAME_PREFIX ...]   # e.g. `train` runs only the training checks

Device placement and dtype of ``load_model("auto")``, hook points in bfloat16 on the GPU against float32
on the CPU, the memory refusal with the GPU's free memory, pynvml on the real GPU (and whether a worker's
pid appears in its process list), a background job on the GPU, a real CUDA out-of-memory error
classified as ``oom``, extraction on the GPU in a background worker, and extraction halving its batch
on real CUDA out-of-memory errors; SAE training on the GPU (a background worker on bfloat16 activations,
a model-streamed source, and tokens/s of sk.train vs a hand-written TopK loop vs the encoder matmul's
bound). Each check reports its own failure and the others go on.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpu_kinds  # noqa: E402,F401 (the job kinds the checks submit, in a module a worker can import)


def check(name: str, fn) -> None:
    t = time.perf_counter()
    try:
        out = {"check": name, "ok": True, **fn()}
    except Exception as exc:  # noqa: BLE001 - a failed check is reported, the others go on
        out = {"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}",
               "traceback": traceback.format_exc(limit=6)}
    out["seconds"] = round(time.perf_counter() - t, 2)
    print(json.dumps(out, default=str), flush=True)


def main() -> None:
    import torch

    import saekit as sk
    from saekit.errors import ModelLoadError
    from saekit.models.tiny import make_tiny_model, stdlib_docstrings

    tmp = Path(tempfile.mkdtemp())
    sk.set_workspace(tmp / "ws")
    docs = stdlib_docstrings()
    model_dir = make_tiny_model(tmp / "tiny", "llama", texts=docs, d_model=128, n_layers=4)

    def cuda():
        return {"available": torch.cuda.is_available(), "name": torch.cuda.get_device_name(0),
                "torch": torch.__version__, "bf16": torch.cuda.is_bf16_supported()}

    def placement():
        gpu = sk.load_model(model_dir)  # device="auto", dtype="auto"
        cpu = sk.load_model(model_dir, device="cpu")
        ids = gpu.tokenizer(docs[:4], return_tensors="pt", padding=True)["input_ids"]
        names = ["blocks.2.resid_post", "blocks.1.attn_out", "blocks.1.mlp_out"]
        a, b = gpu.run_with_cache(ids, names), cpu.run_with_cache(ids, names)
        rel = {n: float((a[n].float().cpu() - b[n]).norm() / b[n].norm()) for n in names}
        return {"device": str(gpu.device), "dtype": str(gpu.dtype), "ref_dtype": gpu.ref["dtype"],
                "cache_device": str(a[names[0]].device), "relative_error_bf16_vs_fp32": rel,
                "generate": gpu.generate("The file", max_new_tokens=5).text}

    def refusal():
        from transformers import LlamaConfig

        big = tmp / "huge"
        big.mkdir()
        LlamaConfig(hidden_size=16384, intermediate_size=65536, num_hidden_layers=120, num_attention_heads=128,
                    vocab_size=128000).save_pretrained(big)
        try:
            sk.load_model(big)
        except ModelLoadError as exc:
            return {"refused": True, "message": str(exc)}
        return {"refused": False}

    def nvml_and_job():
        import pynvml

        from saekit.jobs import submit

        job = submit("gpu_hold", {"mib": 512, "seconds": 6})
        deadline = time.time() + 60
        while (job.progress or 0) < 20 and time.time() < deadline:
            time.sleep(0.1)
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        procs = [{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) / 2**20}
                 for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)]
        worker_pid = job.info()["worker_pid"]
        out = {"nvml_devices": pynvml.nvmlDeviceGetCount(), "name": pynvml.nvmlDeviceGetName(handle),
               "memory_used_mib": mem.used / 2**20, "memory_total_mib": mem.total / 2**20,
               "utilization_gpu": util.gpu, "temperature_c": pynvml.nvmlDeviceGetTemperature(handle, 0),
               "power_w": pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, "processes": procs,
               "worker_pid": worker_pid, "worker_pid_in_nvml": any(p["pid"] == worker_pid for p in procs)}
        pynvml.nvmlShutdown()
        out["job_result"] = job.result(timeout=120)
        out["job_status"] = job.status
        return out

    def oom():
        from saekit.jobs import submit

        job = submit("gpu_oom", {"gib": 4096})
        job.wait(timeout=120)
        info = job.info()
        return {"status": info["status"], "error_type": info["error_type"],
                "message": (info["error_message"] or "")[:200], "suggestion": info["suggestion"]}

    def tokenize_job():
        lm = sk.load_model(model_dir)
        corpus_file = tmp / "docs.jsonl"
        corpus_file.write_text("\n".join(json.dumps({"text": d}) for d in docs))
        store = sk.tokenize(sk.load_corpus(corpus_file), lm, context_length=64).result(timeout=300)
        return {"store": repr(store), "tokens": store.stats()["tokens"]}

    def extract_background():
        lm = sk.load_model(model_dir)
        corpus_file = tmp / "docs.jsonl"
        store = sk.tokenize(sk.load_corpus(corpus_file), lm, context_length=64, background=False, progress=False).result()
        t = time.perf_counter()
        acts = sk.extract(lm, store, ["blocks.2.resid_post", "blocks.1.mlp_out"]).result(timeout=300)
        seconds = time.perf_counter() - t
        x = acts.read("blocks.2.resid_post", 0, 1000)
        return {"store": repr(acts), "seconds_with_worker_start": round(seconds, 2), "dtype": str(x.dtype),
                "finite": bool(torch.isfinite(x.float()).all()), "batch_size": acts.attrs.get("batch_size"),
                "mean_norm": acts.stats("blocks.2.resid_post")["mean_norm"]}

    def extract_oom_halving():
        wide = make_tiny_model(tmp / "wide", "llama", texts=docs[:200], d_model=2048, n_layers=2, n_heads=16)
        lm = sk.load_model(wide)
        corpus_file = tmp / "docs4.jsonl"
        corpus_file.write_text("\n".join(json.dumps({"text": d}) for d in docs * 4))
        store = sk.tokenize(sk.load_corpus(corpus_file), lm, context_length=256, background=False,
                            progress=False).result()
        free, total = torch.cuda.mem_get_info()
        hog = torch.empty(int(free - 3 * 2**30), dtype=torch.uint8, device="cuda")  # leave 3 GiB
        try:
            job = sk.extract(lm, store, "blocks.1.resid_post", batch_size=4096, max_tokens=300_000,
                             background=False, progress=False)
        finally:
            del hog
            torch.cuda.empty_cache()
        warnings = [e["message"] for e in job.events() if e["level"] == "warning"]
        return {"status": job.status, "warnings": warnings, "n_tokens": job.info()["result"]["n_tokens"]
                if job.status == "completed" else None, "error": job.info()["error_message"]}

    def train_background_gpu():
        lm = sk.load_model(model_dir)
        corpus_file = tmp / "docs.jsonl"
        if not corpus_file.exists():
            corpus_file.write_text("\n".join(json.dumps({"text": d}) for d in docs))
        store = sk.tokenize(sk.load_corpus(corpus_file), lm, context_length=64, background=False, progress=False).result()
        acts = sk.extract(lm, store, "blocks.2.resid_post", background=False, progress=False).result()
        t = time.perf_counter()
        run = sk.train(acts, "blocks.2.resid_post", sk.SAEConfig(arch="topk", expansion_factor=16, k=16),
                       sk.TrainConfig(total_tokens=2_000_000, batch_size=4096, log_every=20), eval_model=lm)
        sae = run.result(timeout=300)
        streamed = sk.train((lm, store), "blocks.2.resid_post", sk.SAEConfig(arch="batchtopk", expansion_factor=8, k=16),
                            sk.TrainConfig(total_tokens=200_000, batch_size=4096, log_every=10), background=False,
                            progress=False)
        return {"seconds_with_worker_start": round(time.perf_counter() - t, 2), "store_dtype": str(acts.dtype),
                "param_dtypes": sorted({str(p.dtype) for p in sae.parameters()}),
                "eval": run.info()["result"]["saes"][0]["eval"],
                "tokens_per_s": float(run.metrics()["tokens_per_s"].dropna().median()),
                "streamed_eval": streamed.info()["result"]["saes"][0]["eval"], "streamed_status": streamed.status}

    def train_speed():
        x = torch.randn(262_144, 512)
        store = sk.ActivationStore.from_array(x, "bench")
        batch, d_sae, k = 4096, 8192, 32
        out = {}
        a, w = torch.randn(batch, 512, device="cuda"), torch.randn(d_sae, 512, device="cuda")
        for dtype in (torch.float32, torch.bfloat16):
            aa, ww = a.to(dtype), w.to(dtype)
            for _ in range(3):
                aa @ ww.t()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(50):
                aa @ ww.t()
            torch.cuda.synchronize()
            out[f"matmul_bound_tokens_per_s_{str(dtype)[6:]}"] = round(batch * 50 / (time.perf_counter() - t))
        for encoder_dtype, preload in (("float32", None), ("bfloat16", None), ("float32", False)):
            run = sk.train(store, "bench", sk.SAEConfig(arch="topk", d_sae=d_sae, k=k, encoder_dtype=encoder_dtype),
                           sk.TrainConfig(total_tokens=batch * 300, batch_size=batch, lr=1e-4, log_every=50,
                                          eval_tokens=batch, checkpoint_every=10**9, preload=preload),
                           background=False, progress=False)
            label = encoder_dtype + ("_streamed" if preload is False else "")
            out[f"saekit_tokens_per_s_{label}"] = round(float(run.metrics()["tokens_per_s"].dropna().iloc[1:].median()))
        w_enc = (torch.randn(d_sae, 512, device="cuda") / 512**0.5).requires_grad_()
        w_dec = w_enc.detach().clone().requires_grad_()
        b_enc = torch.zeros(d_sae, device="cuda", requires_grad=True)
        b_dec = torch.zeros(512, device="cuda", requires_grad=True)
        opt = torch.optim.Adam([w_enc, w_dec, b_enc, b_dec], lr=1e-4)
        data = x.cuda()
        for step in range(120):
            if step == 20:
                torch.cuda.synchronize()
                t = time.perf_counter()
            xb = data[(step * batch) % (len(data) - batch):][:batch]
            pre = (xb - b_dec) @ w_enc.t() + b_enc
            values, indices = pre.topk(k, dim=1, sorted=False)
            z = torch.zeros_like(pre).scatter(1, indices, values.relu())
            ((z @ w_dec + b_dec - xb) ** 2).sum(-1).mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        out["hand_loop_tokens_per_s"] = round(100 * batch / (time.perf_counter() - t))
        out["saekit_over_hand"] = round(out["saekit_tokens_per_s_float32"] / out["hand_loop_tokens_per_s"], 2)
        out["fraction_of_fp32_bound"] = round(out["saekit_tokens_per_s_float32"] / out["matmul_bound_tokens_per_s_float32"], 3)
        return out

    def monitor_panel():
        from saekit.jobs import submit
        from saekit.widgets.job_widget import JobWidget
        from saekit.widgets.system_widget import SystemMonitor

        os.environ["SAEKIT_HEARTBEAT"] = "1"
        job = submit("gpu_hold", {"mib": 2048, "seconds": 8})
        deadline = time.time() + 60
        while (job.progress or 0) < 40 and time.time() < deadline:
            time.sleep(0.2)
        panel = SystemMonitor(interval=1.0)
        sample = panel.samples[-1]
        widget = JobWidget(job)
        out = {"gpu_reason": panel.gpu_reason, "gpus": sample["gpus"], "gpu_jobs": panel.gpu_jobs,
               "worker_pid": job.info()["worker_pid"], "cpu_percent": sample["cpu_percent"],
               "ram_used": sample["ram_used"], "job_widget_resources": widget.resources[-2:]}
        job.wait(timeout=60)
        panel.close()
        return out

    wanted = sys.argv[1:]
    for name, fn in [("cuda", cuda), ("placement", placement), ("refusal", refusal),
                     ("nvml_and_background_job", nvml_and_job), ("cuda_oom_classified", oom),
                     ("tokenize_background", tokenize_job), ("extract_background_gpu", extract_background),
                     ("extract_oom_halving", extract_oom_halving), ("train_background_gpu", train_background_gpu),
                     ("train_speed", train_speed), ("monitor_panel", monitor_panel)]:
        if not wanted or name == "cuda" or any(name.startswith(w) for w in wanted):
            check(name, fn)


if __name__ == "__main__":
    main()
