"""`visiontales serve`: a web app (Gradio, the `serve` extra) over trained checkpoints.

- *Photos to story* (a CLIPStoryteller): three photos, a decoding, the story beside the photos.
- *Story to pictures* (a SAGANetsCaptioner and any Visualizer): one or more first captions, the
  number of frames, LoRA alpha, seed and continuity; the frames appear one by one with their
  captions (`SAGANetsPipeline.one_by_one`), then `storyboard.png` and `story.json` to download.

Bad input (not three photos, an unreadable image, an empty caption, a missing model) is answered
in the page by a line starting with "error:"; the server keeps running.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from visiontales.errors import VisionTalesError

DECODINGS = ("greedy", "beam", "nucleus")
MAX_FRAMES = 10
KEPT_STORIES = 20  # the latest drawn stories' files kept for download; older ones are deleted


class StoryApp:
    """The two flows as plain functions of the page's inputs (what the Gradio handlers call)."""

    def __init__(self, storyteller=None, captioner=None, visualizer=None, placement=None) -> None:
        self.storyteller, self.captioner, self.visualizer = storyteller, captioner, visualizer
        self.placement = placement
        self.outputs = Path(tempfile.mkdtemp(prefix="visiontales-serve-"))
        self.drawn = 0

    def _autocast(self):
        from contextlib import nullcontext

        return self.placement.autocast() if self.placement is not None else nullcontext()

    def tell(self, photos: list[str] | None, decoding: str) -> tuple[str, list[str], str]:
        """(status line, the photos to show, the story)."""
        from data_modules.images import load_image

        if self.storyteller is None:
            return "error: no storyteller was given (visiontales serve --storyteller CKPT)", [], ""
        photos = list(photos or [])
        self.storyteller.hparams.decoding = decoding
        try:
            for photo in photos:  # read in full, even by a storyteller that does not look at them
                load_image(Path(photo), lambda image: None)
            with self._autocast():
                story = self.storyteller.tell(photos)
        except VisionTalesError as e:
            return f"error: {e}", photos, ""
        note = "" if self.storyteller.clip is not None else \
            " (this storyteller was trained with prompt conditioning: it does not look at the photos)"
        return f"told with {decoding} decoding{note}", photos, story

    def draw(self, text: str, frames: int, lora_alpha: float, seed: int, continuity: float):
        """Yields (status line, [(frame, caption), ...] so far, files to download or None)."""
        from visiontales.pipeline import SAGANetsPipeline, to_image, write_story

        if self.captioner is None or self.visualizer is None:
            yield "error: drawing needs a captioner and a visualizer (--captioner CKPT --visualizer CKPT)", [], None
            return
        captions = [line.strip() for line in (text or "").splitlines() if line.strip()]
        frames, seed = int(frames), int(seed)
        if not captions:
            yield "error: type a first caption (one caption per line)", [], None
            return
        if frames < len(captions):
            yield f"error: {frames} frames is fewer than the {len(captions)} captions given", [], None
            return
        shown, drawn, told = [], [], []
        try:
            alpha = lora_alpha if self.visualizer.default_lora_alpha is not None else None  # no adapters: no alpha
            pipeline = SAGANetsPipeline(self.captioner, self.visualizer, alpha, continuity or None)
            with self._autocast():
                for caption, frame in pipeline.one_by_one(captions, frames, seed):
                    told.append(caption)
                    drawn.append(frame)
                    shown.append((to_image(frame), caption))
                    yield f"drawing: {len(shown)} of {frames} frames", list(shown), None
        except VisionTalesError as e:
            yield f"error: {e}", shown, None
            return
        self.drawn += 1
        out = self.outputs / f"story-{self.drawn}"
        shutil.rmtree(self.outputs / f"story-{self.drawn - KEPT_STORIES}", ignore_errors=True)
        board = write_story(pipeline.story(told, drawn, len(captions), 0, seed), out)
        yield f"done: {frames} frames", shown, [str(board), str(out / "story.json")]


def build(app: StoryApp, title: str = "VisionTales"):
    """The Gradio Blocks of the two flows."""
    import gradio as gr

    with gr.Blocks(title=title, analytics_enabled=False) as blocks:
        gr.Markdown(f"# {title}\nVisual storytelling in both directions: photos to a story (VisionTales), "
                    "a story to pictures (SAGANets).")
        with gr.Tab("Photos to story", id="tell-tab"):
            photos = gr.File(file_count="multiple", type="filepath", label="Three photos, in story order",
                             elem_id="photos")
            default = app.storyteller.hparams.decoding if app.storyteller is not None else "greedy"
            decoding = gr.Radio(list(DECODINGS), value=default, label="Decoding", elem_id="decoding")
            tell = gr.Button("Tell the story", variant="primary", elem_id="tell")
            tell_status = gr.Markdown(elem_id="tell-status")
            with gr.Row():
                shown = gr.Gallery(label="Photos", columns=3, height=260, elem_id="tell-photos")
                story = gr.Textbox(label="Story", lines=6, interactive=False, elem_id="story")
            tell.click(app.tell, [photos, decoding], [tell_status, shown, story])
        with gr.Tab("Story to pictures", id="draw-tab"):
            captions = gr.Textbox(label="First caption(s), one per line", lines=3, elem_id="captions",
                                  value="Fred and Barney are talking in the quarry.")
            with gr.Row():
                frames = gr.Slider(1, MAX_FRAMES, value=5, step=1, label="Frames", elem_id="frames")
                default = getattr(app.visualizer, "default_lora_alpha", None)
                alpha = gr.Slider(0, 64, value=default or 0, step=1, label="LoRA alpha", elem_id="alpha",
                                  visible=default is not None)  # a visualizer without adapters takes none
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                continuity = gr.Slider(0, 1, value=0, step=0.05, label="Continuity (0: off)", elem_id="continuity")
            draw = gr.Button("Draw the story", variant="primary", elem_id="draw")
            draw_status = gr.Markdown(elem_id="draw-status")
            board = gr.Gallery(label="Storyboard", columns=5, height=320, elem_id="board")
            files = gr.File(label="storyboard.png and story.json", file_count="multiple", elem_id="downloads")
            draw.click(app.draw, [captions, frames, alpha, seed, continuity], [draw_status, board, files])
    return blocks


def launch(app: StoryApp, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Serve the app, offline (no share link, no analytics, no web fonts); with `block` False,
    return the running Blocks at once (`.close()` stops them)."""
    import gradio as gr

    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])  # no Google Fonts: works offline
    blocks = build(app).queue()
    try:
        blocks.launch(server_name=host, server_port=port, share=False, show_error=True, prevent_thread_lock=not block,
                      quiet=not block, ssr_mode=False, theme=theme, footer_links=[])
    except OSError as e:  # the port is taken, or the address is not this machine's
        raise VisionTalesError(f"cannot serve on {host}:{port} ({e})") from e
    return blocks
