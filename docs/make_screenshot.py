"""Regenerate docs/tui.svg (and docs/tui.png where cairosvg is installed): `python docs/make_screenshot.py`.

The app opens on its built-in default (OPT-6.7B shapes with 8k positions on the H100 profile,
batch 32, prompt 4096, 128 new tokens); `{` moves the split a tenth of the prompt below the LP
optimum, so both are marked on the chart. The PNG is rendered with DejaVu Sans Mono, which has
the braille and box-drawing characters at the terminal's cell width.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from tui.app import AdvisorApp  # noqa: E402

SIZE = (150, 45)


async def shoot() -> str:
    app = AdvisorApp(export_path="plan.json")
    async with app.run_test(size=SIZE) as pilot:
        await app.settled()
        await pilot.press("left_curly_bracket")
        await app.settled()
        return app.export_screenshot(title="advisor tui")


def main() -> None:
    svg = asyncio.run(shoot())
    (HERE / "tui.svg").write_text(svg)
    print(f"wrote {HERE / 'tui.svg'}")
    try:
        import cairosvg
    except ImportError:
        print("cairosvg is not installed: no PNG")
        return
    mono = svg.replace('"Fira Code"', '"DejaVu Sans Mono"').replace("Fira Code, monospace", '"DejaVu Sans Mono", monospace')
    cairosvg.svg2png(bytestring=mono.encode(), write_to=str(HERE / "tui.png"), output_width=1800)
    print(f"wrote {HERE / 'tui.png'}")


if __name__ == "__main__":
    main()
