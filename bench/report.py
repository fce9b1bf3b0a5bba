"""The results as markdown tables (what `python -m bench` prints, and what the README quotes).

    python -m bench.report [bench/results/latest.json]    # print the table of a saved run again
"""

from __future__ import annotations

from typing import Any


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def times(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}x"
    return f"{value:.1f}x" if value < 100 else f"{value:.0f}x"


def verdict(met: bool | None) -> str:
    return {True: "**met**", False: "**missed**", None: "-"}[met]


def _median(summary: dict[str, Any] | None) -> float | None:
    return None if not summary else summary.get("median")


def cold(result: dict[str, Any]) -> str:
    peers = result["peers"]
    faas = peers.get("faas-supervisor")
    rows = []
    for name, p in peers.items():
        wall, cpu, rss = (_median(p[k]) for k in ("wall", "cpu", "rss"))
        vs = "1x" if name == "faas-supervisor" else (
            times(wall / _median(faas["wall"])) if faas and wall else "-")
        label = {"faas-supervisor": "faas-supervisor 1.5.8", "conveyor": "Conveyor `conveyor run`"}.get(name, name)
        rows.append([label, seconds(wall), seconds(cpu), mib(rss), vs])
    text = _table(["worker (fresh process per event)", "wall", "CPU (user+sys)", "peak RSS", "wall vs faas-supervisor"],
                  rows)
    r = result.get("ratios", {}).get("conveyor/faas-supervisor")
    if r:
        target = result["target_ratio"]
        met = r["wall"] is not None and r["cpu"] is not None and r["wall"] <= target and r["cpu"] <= target
        text += (f"\n\nConveyor / faas-supervisor: wall {times(r['wall'])}, CPU {times(r['cpu'])}, "
                 f"peak RSS {times(r['rss'])}; target wall and CPU <= {target}x: {verdict(met)}.")
    if result.get("breakdown"):
        rows = [[name, seconds(_median(b["wall"])), mib(_median(b["rss"]))] for name, b in result["breakdown"].items()]
        text += "\n\nWhere a fresh process's time goes (one import set per process):\n\n"
        text += _table(["fresh `python -c ...`", "wall", "peak RSS"], rows)
    if result.get("event"):
        text += "\n\n" + cold_event(result["event"])
    for name, why in result.get("skipped", {}).items():
        text += f"\n\n{name} not measured: {why}"
    return text


PHASE_LABELS = {
    "start": "interpreter start and exit (first process)",
    "seal": "sealing re-exec (a second interpreter start)",
    "cli": "CLI imports (conveyor.cli, logging)",
    "config": "logging set up, config modules imported, definition parsed",
    "setup": "event parsed, pipeline imported, handler and job built",
    "store": "store opened (its SDK imported, client built)",
    "fetch": "fetch (GET)",
    "model": "model (the `cp` script)",
    "upload": "upload (PUT)",
    "record": "record (work dir, environment, record, log line)",
    "other": "the rest (exit code, atexit)",
}


def cold_event(event: dict[str, Any]) -> str:
    """One cold `conveyor run` phase by phase, its imports (-X importtime) and the import budget."""
    wall = _median(event["wall"]) or 0.0
    rows = []
    for name, summary in event["phases"].items():
        value = _median(summary)
        share = f"{value / wall * 100:.0f} %" if value is not None and wall else "-"
        rows.append([PHASE_LABELS.get(name, name), ms(None if value is None else value * 1000), share])
    rows.append(["**wall** (this instrumented run)", ms(wall * 1000), "100 %"])
    text = (f"One cold event, phase by phase (medians of {event['rounds']} runs; from wall-clock stamps, "
            "the record's timings and the launcher's wall):\n\n" + _table(["phase", "time", "share"], rows))
    procs = event.get("imports", {}).get("processes", [])
    if procs:
        rows = []
        for i, p in enumerate(procs):
            top = ", ".join(f"{n} {v * 1000:.1f}" for n, v in list(p["top"].items())[:5])
            rows.append([f"{i + 1} ({'before the re-exec' if i == 0 and len(procs) > 1 else 'the work'})",
                         ms(p["interpreter"] * 1000), ms(p["conveyor"] * 1000), ms(p["other"] * 1000), top])
        text += "\n\nImports of one cold run under `python -X importtime` (it slows imports down; cumulative ms):\n\n"
        text += _table(["process", "interpreter (site)", "conveyor.*", "other", "largest top-level imports"], rows)
    broken = event.get("budget_broken") or []
    text += (f"\n\nImport budget (never imported by this event: {', '.join(event.get('budget', []))}): "
             f"{'**broken** by ' + ', '.join(broken) if broken else 'kept'}. "
             f"Heavy modules it did import: {', '.join(event.get('watched_imported', [])) or 'none'}.")
    return text


def warm(result: dict[str, Any]) -> str:
    rows = []
    for name, p in result.get("peers", {}).items():
        overhead = _median(p["overhead"])
        rows.append([
            {"lambda emulator": "Lambda (RIE, awslambdaric)", "warm worker": "warm worker (run_event)"}.get(name, name),
            ms(overhead),
            f"{ms(_median(p['download']))} / {ms(_median(p['upload']))}",
            ms(_median(p.get("own"))),
            ms(_median(p["latency"])),
            ms(_median(p["handler"])),
            verdict(None if overhead is None else overhead <= result["target_ms"]),
        ])
    text = _table(["warm path", "overhead", "of which GET / PUT 100 KiB", "without GET/PUT", "event total",
                   "handler (excluded)",
                   f"<= {result['target_ms']:.0f} ms"], rows)
    for name, why in result.get("skipped", {}).items():
        text += f"\n\n{name} not measured: {why}"
    return text


def models(results: dict[str, dict[str, Any]], target: float) -> str:
    rows = []
    names = {"deepaas": "DEEPaaS (demo plugin)", "darknet": "Darknet YOLOv3-tiny, dog.jpg"}
    warm_names = {"deepaas": "warm in-process", "darknet": "OpenCV in-process"}
    notes = []
    for key, result in results.items():
        if "skipped" in result:
            notes.append(f"{names[key]} not measured: {result['skipped']}")
            continue
        per_file = result["per_file"]
        warm_s = _median(per_file["warm"])
        for cli, summary in per_file.items():
            if cli == "warm":
                continue
            speedup = result["speedup"][f"{cli}/warm"]
            wanted = result.get("target_speedup", target)
            rows.append([names[key], f"{warm_names[key]} {seconds(warm_s)}", f"`{cli}` {seconds(_median(summary))}",
                         times(speedup), verdict(None if speedup is None else speedup >= wanted), f"{wanted:.0f}x"])
    text = _table(["model", "warm, per file", "CLI, per file", "CLI / warm", "met", "target"], rows)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def memory(result: dict[str, Any]) -> str:
    labels = {"minio": "`minio` provider (obstore; a large create-only upload: minio SDK)",
              "s3": "`s3` provider (obstore; a large create-only upload: boto3)"}
    sizes = ["1 MiB", "100 MiB", "1 GiB"]
    rows = []
    for provider, row in result.get("rows", {}).items():
        growth = row.get("growth_mib")
        rows.append([labels.get(provider, provider),
                     *(mib(_median(row[s]["rss"])) if s in row else "-" for s in sizes),
                     "-" if growth is None else f"+{growth:.0f} MiB",
                     verdict(None if growth is None else growth <= result["target_mib"])])
    text = _table(["`conveyor run`, cp script", *sizes, "1 GiB - 1 MiB", f"<= {result['target_mib']:.0f} MiB"], rows)
    for label, why in result.get("skipped", {}).items():
        text += f"\n\n{label} not measured: {why}"
    return text


def throughput(result: dict[str, Any]) -> str:
    if "skipped" in result:
        return f"not measured: {result['skipped']}"
    rows = []
    for name, row in result["runs"].items():
        rows.append([name, str(result["files"]), str(result["workers"]),
                     f"{_median(row['files_per_s']):.1f}" if _median(row["files_per_s"]) else "-",
                     f"{row['ideal_files_per_s']:.1f}" if row.get("ideal_files_per_s") else "-",
                     f"{row['efficiency'] * 100:.0f} %" if row.get("efficiency") else "-"])
    text = _table(["`conveyor local --once`", "files", "workers", "files/s", "model-bound ideal", "of ideal"], rows)
    parts = ("run", "record", "fetch", "model", "upload", "outside")
    rows = []
    for name, row in result["runs"].items():
        per_file = row.get("per_file") or {}
        if not per_file:
            continue
        cpu = _median(row.get("cpu_seconds_per_file"))
        rows.append([name, ms(None if cpu is None else cpu * 1000),
                     *(ms(None if _median(per_file.get(p)) is None else _median(per_file[p]) * 1000) for p in parts)])
    if rows:
        text += ("\n\nWhere a file's time goes (medians per file; *job* = started to done as the loop sees it, "
                 "*outside the record* = the job's start-up, imports, config and exit, and the loop's completion "
                 "work; CPU = the whole tree, loop and S3 server included, per file):\n\n")
        text += _table(["", "CPU / file", "job", "record", "fetch", "model", "upload", "outside the record"], rows)
    return text


def host(result: dict[str, Any]) -> str:
    calls = result["per_call"]
    hop = result.get("hop_ms")
    start = _median(result.get("host_start"))
    return _table(
        ["no-op handler, 1 KiB input", "inline per call", "hosted per call", "hop", f"< {result['target_ms']:g} ms",
         "host start"],
        [["handle()", _fine(_median(calls["inline"])), _fine(_median(calls["hosted"])),
          "-" if hop is None else f"{hop:.3f} ms", verdict(result.get("met")), seconds(start)]],
    )


def _fine(value: float | None) -> str:
    """Seconds as milliseconds with three decimals (a hop is tens of microseconds)."""
    return "-" if value is None else f"{value * 1000:.3f} ms"
def sweep(result: dict[str, Any]) -> str:
    names = {"deepaas": "DEEPaaS (demo plugin, warm)", "darknet": "Darknet YOLOv3-tiny (OpenCV)"}
    rows, notes = [], []
    for key, r in result["results"].items():
        if "skipped" in r:
            notes.append(f"{names[key]} not measured: {r['skipped']}")
            continue
        over = r["sweep_over_warm"]
        rows.append([names[key], seconds(r["sweep"]["per_input"]), seconds(r["sweep"]["total"]),
                     seconds(_median(r["run"]["per_input"])), seconds(r["run"]["total"]),
                     seconds(_median(r["warm_per_file"])), times(over),
                     verdict(None if over is None else over <= result["target"])])
    text = _table(["model", "sweep, per input", "sweep, total", "`run`, per input", "`run`, total",
                   "warm, per file", "sweep / warm", f"<= {result['target']}x"], rows)
    if notes:
        text += "\n\n" + "\n".join(notes)
    return text


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = m.get("load_average_at_start")
    parts = [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m.get('memory_gib')} GiB, {m['os']}, Python {m['python']}; "
        f"{m['date']}; commit {m.get('commit')}; load average at start {load[0] if load else '?'} "
        f"(1 min). Medians of the repeats shown per section."
    ]
    sections = results["sections"]
    if "cold" in sections:
        r = sections["cold"]
        parts.append(f"**1. One event, fresh process** (100 KiB object, `cp` script, {r['rounds']} rounds)\n\n"
                     + cold(r))
    if "warm" in sections:
        r = sections["warm"]
        parts.append(f"**2. Warm per-event overhead** (100 KiB object, `cp` script, {r['rounds']} events each)\n\n"
                     + warm(r))
    if "models" in sections:
        r = sections["models"]
        parts.append(f"**3. Models, warm vs CLI per file** ({r['rounds']} rounds)\n\n"
                     + models(r["results"], r["target_speedup"]))
    if "memory" in sections:
        r = sections["memory"]
        parts.append(f"**4. Peak RSS vs object size** ({r['rounds']} rounds)\n\n" + memory(r))
    if "throughput" in sections:
        r = sections["throughput"]
        parts.append(f"**5. Throughput** ({r.get('rounds', 0)} rounds)\n\n" + throughput(r))
    if "host" in sections:
        r = sections["host"]
        parts.append(f"**6. Model host hop per input** ({r['rounds']} rounds of {r['calls_per_round']} calls)\n\n"
                     + host(r))
    if "large" in sections:
        from bench import large

        r = sections["large"]
        parts.append(f"**4b. One large object, GET and PUT, Conveyor vs boto3** ({r['rounds']} rounds)\n\n"
                     + large.render(r))
    if "serve" in sections:
        from bench import serve

        r = sections["serve"]
        parts.append(f"**7. Warm OSCAR sync and conveyor serve** ({r.get('rounds', 0)} rounds)\n\n" + serve.render(r))
    if "sweep" in sections:
        r = sections["sweep"]
        parts.append(f"**8. A folder: one `conveyor sweep` shard vs a `conveyor run` per file** "
                     f"({r['inputs']} inputs)\n\n" + sweep(r))
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    import json
    import sys
    from pathlib import Path

    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0]) if args else Path(__file__).with_name("results") / "latest.json"
    print(render(json.loads(path.read_text())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
