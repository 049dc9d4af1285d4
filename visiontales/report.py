"""The reproduction report: reports/<profile>/index.html, one page a person reads in a browser.

Everything the page shows is copied or rendered into the report folder (loss curves drawn from
the TensorBoard event files with matplotlib, storyboards, sample grids, configs), so the folder
stands alone and `missing_links` can prove that every link resolves.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from visiontales.evaluation.evaluate import LABELS

TABLE_COLUMNS = ("char_acc", "char_f1", "consistency", "fid", "clip_score", "bleu4", "meteor", "rougeL", "cider")
PERCENT = ("char_acc", "char_f1", "consistency")


def epoch_series(run_dir: Path, tag: str) -> list[float]:
    """A scalar's values in logging order from a run's TensorBoard event files ([] if absent)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = []
    for events in sorted(run_dir.glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values += [e.value for e in accumulator.Scalars(tag)]
    return values


def plot_curves(series: dict[str, list[float]], title: str, path: Path, xlabel: str = "epoch") -> Path | None:
    """A line plot of named series (x = 1..n) as PNG; None when there is nothing to draw."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for name, values in series.items():
        ax.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True).stdout.strip()
        return sha + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def missing_links(page: Path) -> list[str]:
    """Local src/href targets of an HTML page that do not exist."""
    targets = re.findall(r'(?:src|href)="([^"#]+)"', page.read_text())
    return [t for t in targets if not re.match(r"[a-z]+:", t) and not (page.parent / t).exists()]


class Page:
    def __init__(self, root: Path) -> None:
        self.root, self.parts = root, []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def asset(self, path: Path, name: str | None = None) -> str:
        """Copy `path` into the report's assets; its link relative to the page."""
        target = self.root / "assets" / (name or Path(path).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(path).resolve() != target.resolve():
            shutil.copyfile(path, target)
        return target.relative_to(self.root).as_posix()

    def image(self, path: Path | None, caption: str, name: str | None = None) -> None:
        """Show `path` (copied into the assets) with its caption, or say that it was not produced."""
        if path is None or not Path(path).is_file():
            self.add(f"<p class='missing'>{html.escape(caption)}: not produced</p>")
            return
        rel = self.asset(path, name)
        self.add(f"<figure><a href='{rel}'><img src=\"{rel}\" alt=\"{html.escape(caption)}\"></a>"
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def table(self, header: list[str], rows: list[list[str]], numeric: bool = False) -> None:
        head = "".join(f"<th>{h}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
        self.add(f"<table{' class=num' if numeric else ''}><tr>{head}</tr>{body}</table>")

    def write(self, title: str) -> Path:
        style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;"
                 "text-align:left;vertical-align:top}.num td,.num th{text-align:right}"
                 ".num td:first-child,.num th:first-child{text-align:left}img{max-width:100%}"
                 "img.thumb{height:96px;margin-right:4px}"
                 "figure{margin:1em 0}figcaption{color:#555;font-size:90%}.missing{color:#a00}"
                 "pre{background:#f4f4f4;padding:8px;overflow-x:auto;font-size:85%}")
        page = self.root / "index.html"
        page.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                        f"<style>{style}</style></head><body>" + "\n".join(self.parts) + "</body></html>")
        return page


def _metrics(report_dir: Path, name: str) -> dict[str, Any] | None:
    path = report_dir / "eval" / name / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def results(report_dir: Path, manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Row id -> the metrics `evaluate` wrote for it (under its names: char_acc, char_f1, fid,
    clip_score, bleu4, ...), plus `fid_protocol` when there is a FID; rows not evaluated are absent.
    Written as results.json, and what the HTML table is rendered from."""
    rows = {}
    for entry in manifest["rows"]:
        result = _metrics(report_dir, entry["id"])
        if result is not None:
            row = dict(result["metrics"])
            if "fid" in result.get("protocols", {}):
                row["fid_protocol"] = result["protocols"]["fid"]
            rows[entry["id"]] = row
    return rows


def results_rows(table: dict[str, dict[str, Any]], manifest: dict[str, Any]) -> tuple[list[list[str]], dict[str, str]]:
    """One HTML row per evaluated approach (manifest["rows"]) from `results`; the FID protocols
    met, for the footnote."""
    rows, protocols = [], {}
    for entry in manifest["rows"]:
        label, slug = entry["label"], entry["id"]
        m = table.get(slug)
        if m is None:
            rows.append([html.escape(label)] + ["not run"] * len(TABLE_COLUMNS))
            continue
        if "fid_protocol" in m:
            protocols.setdefault(m["fid_protocol"], f"[{len(protocols) + 1}]")
        row = [f"<a href='eval/{slug}/metrics.md'>{html.escape(label)}</a>"]
        for key in TABLE_COLUMNS:
            value = m.get(key)
            cell = "" if value is None else f"{100 * value:.2f}" if key in PERCENT else f"{value:.3f}"
            if key == "fid" and value is not None:
                cell += " " + protocols[m["fid_protocol"]]
            row.append(cell)
        rows.append(row)
    return rows, protocols


def build_report(report_dir: Path, runs_dir: Path, manifest: dict[str, Any]) -> Path:
    page = Page(report_dir)
    profile = manifest["profile"]
    page.add(f"<h1>VisionTales and SAGANets, reproduced: profile <code>{profile}</code></h1>")
    page.add(f"<p>commit <code>{html.escape(commit())}</code>; every step and its time in "
             f"<a href='manifest.json'>manifest.json</a>, their output in <a href='log.txt'>log.txt</a>; the "
             f"results table as data in <a href='results.json'>results.json</a>.</p>")

    table = results(report_dir, manifest)
    (report_dir / "results.json").write_text(json.dumps(table, indent=1))
    rows, protocols = results_rows(table, manifest)
    page.add("<h2>Results</h2><p>Test split. Char-Acc and Char-F1 (x100) from the character classifier; "
             "FID by the protocol in its footnote; CLIPScore with the project's CLIP; text metrics "
             "(pycocoevalcap) for the models that write text, and for the pipeline's generated captions. "
             "The GAN family trains against the same CLIP (its L_clip term), so its CLIPScore is partly "
             "optimised directly; Char-F1 and FID are not. Each row links its metrics.md (the pipeline's "
             "also has Char-F1 against the characters its captions name).</p>")
    page.table(["approach", *(LABELS[c] for c in TABLE_COLUMNS)], rows, numeric=True)
    page.add("<ul>" + "".join(f"<li>FID {mark}: {html.escape(protocol)}</li>" for protocol, mark in protocols.items())
             + "</ul>")

    runs = {name: Path(info["dir"]) for name, info in manifest["runs"].items()}
    assets = report_dir / "assets"
    page.add("<h2>VisionTales (images &rarr; story)</h2>")
    page.image(plot_curves({name: epoch_series(runs[name], "train/loss_epoch")
                            for name in ("storyteller_prefix", "storyteller_prompt") if name in runs},
                           "Storyteller training loss per epoch (VisionTales Fig. 2)", assets / "storyteller_loss.png"),
               "Figure 2: training loss over the 7 epochs, prefix and prompt conditioning")
    samples = runs_dir / "storyteller_samples" / "predictions.json"
    if samples.is_file():
        photos = Path(manifest.get("vist_root", "")) / "images" / "test"
        rows = []
        for p in json.loads(samples.read_text())[:6]:
            files = [next(iter(sorted(photos.glob(f"{photo}.*"))), None) for photo in p["photo_ids"]]
            thumbs = "".join(f"<img class=thumb src=\"{page.asset(f, 'vist_' + f.name)}\" alt=\"{f.stem}\">"
                             for f in files if f is not None) or html.escape(" ".join(p["photo_ids"]))
            rows.append([thumbs, html.escape(p["story"]), html.escape(p["references"][0] if p["references"] else "")])
        page.add("<h3>Figure 4: stories for three-image sequences (test split)</h3>")
        page.table(["photos", "generated", "a reference"], rows)

    page.add("<h2>SAGANets (story &rarr; images)</h2>")
    boards = report_dir / "stories"
    page.image(boards / "lora_alpha10" / "storyboard.png",
               "Figure 2: SAGANets after one epoch (captioner + LoRA visualizer, inference alpha 10)",
               "fig2_saganets.png")
    for story in sorted((runs_dir / "sagan_stories" / "stories").glob("*/storyboard.png"))[:4]:
        page.image(story, f"Story continued from a test prefix: {story.parent.name}", f"story_{story.parent.name}.png")
    page.image(boards / "lora_alpha32" / "storyboard.png", "Figure 3 (top): inference alpha 32, as trained",
               "fig3_alpha32.png")
    page.image(boards / "lora_alpha10" / "storyboard.png", "Figure 3 (bottom): inference alpha 10, same seeds",
               "fig3_alpha10.png")
    n = manifest["lora_epochs"]
    page.image(boards / "lora_more_epochs" / "storyboard.png",
               f"Figure 4: the LoRA visualizer trained {n} epochs instead of one, same seeds", "fig4_epochs.png")
    page.image(plot_curves({"train": epoch_series(runs["lora"], "train/loss_epoch"),
                            "val": epoch_series(runs["lora"], "val/loss")},
                           "LoRA visualizer diffusion loss", assets / "lora_loss.png"),
               "LoRA visualizer: training and validation loss per epoch")
    captions = runs_dir / "captioner_samples" / "predictions.json"
    if captions.is_file():
        rows = [[html.escape(" / ".join(p["prefix"]) or "(empty prefix)"), html.escape(p["generated"]),
                 html.escape(p["reference"])] for p in json.loads(captions.read_text())[:8]]
        page.add("<h3>Figure 5: captioner samples after one epoch</h3>")
        page.table(["prefix", "generated next caption", "reference"], rows)

    page.add("<h2>Alternatives: GAN, CLIP-centric, temporal coherence, combined</h2>")
    page.image(plot_curves({"g_loss": epoch_series(runs["gan"], "train/g_loss_epoch"),
                            "d_loss": epoch_series(runs["gan"], "train/d_loss_epoch")},
                           "GAN losses per epoch (SAGANets Fig. 6)", assets / "gan_loss.png"),
               "Figure 6: generator and discriminator losses of the GAN")
    page.image(boards / "gan" / "storyboard.png", "Figure 7 (top): the GAN after 20 epochs", "fig7_gan20.png")
    page.image(boards / "gan_5" / "storyboard.png", "Figure 7 (bottom): the GAN after 5 epochs, same seeds",
               "fig7_gan5.png")
    page.image(plot_curves({"CLIP loss": epoch_series(runs["clip_centric"], "train/loss_clip_epoch"),
                            "total": epoch_series(runs["clip_centric"], "train/g_loss_epoch")},
                           "CLIP-centric losses per epoch (SAGANets Fig. 8)", assets / "clip_centric_loss.png"),
               "Figure 8: the CLIP-centric approach's losses")
    for stem in ("temporal_coherence", "combined"):
        page.image(plot_curves({"total": epoch_series(runs[stem], "train/g_loss_epoch")},
                               f"{stem.replace('_', ' ')} generator loss", assets / f"{stem}_loss.png"),
                   f"{stem.replace('_', ' ')}: generator loss per epoch")
        page.image(boards / stem / "storyboard.png", f"{stem.replace('_', ' ')}: a story", f"{stem}_story.png")

    page.add("<h2>Frames drawn for the test captions</h2><p>Each grid: the first 8 drawn frames (top) above "
             "the real frames of the same clips (bottom), the frames the image metrics scored.</p>")
    for row in manifest["rows"]:
        if (report_dir / "eval" / row["id"] / "samples.png").is_file():
            page.image(report_dir / "eval" / row["id"] / "samples.png", row["label"], f"samples_{row['id']}.png")

    page.add("<h2>Runs: exact configs and commands</h2>")
    for name, info in manifest["runs"].items():
        config = Path(info["config"])
        link = ""
        if config.is_file():
            target = report_dir / "configs" / f"{name}.yaml"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(config, target)
            link = f" (<a href='configs/{name}.yaml'>config.yaml</a>)"
        page.add(f"<h4>{html.escape(name)}{link}</h4><pre>{html.escape(info['command'])}</pre>")
    index = page.write(f"VisionTales reproduction ({profile})")
    missing = missing_links(index)
    if missing:
        raise RuntimeError(f"{index}: links to missing files {missing}")
    return index
