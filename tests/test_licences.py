"""Each file's origin and licence is shown where users look: the page footer, the model card, README.md."""

from pathlib import Path

import pytest

from falco.weights import ARTIFACTS, Manifest
from falco.weights.licences import LICENCES
from falco.weights.model_card import model_card

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_third_party_file_has_its_terms():
    assert set(LICENCES) == set(ARTIFACTS) - {"fake_bank"}   # the bank is made here, from the generator
    assert {n for n, t in LICENCES.items() if t.non_commercial} == {"generator", "dlib_landmarks"}


def assert_names_every_licence(text: str) -> None:
    for terms in LICENCES.values():
        assert terms.work in text and terms.licence in text and terms.url in text, terms.work
    assert "non-commercial use only" in text


def test_page_footer_names_every_licence():
    from falco.ui import engine, page

    demo, _ = page.build_app(loader=engine.EngineLoader(object), device="cpu", load_now=False)
    footers = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "falco-licences"]
    assert len(footers) == 1
    assert_names_every_licence(footers[0].value)
    # At the bottom: the last block with something to show.
    shown = [b for b in demo.children if getattr(b, "visible", True) is True and b.get_block_name() != "timer"]
    assert shown[-1] is footers[0]


def test_model_card_names_every_licence():
    card = model_card(Manifest.unpublished("someone/falco-weights"))
    assert_names_every_licence(card)
    for name, terms in LICENCES.items():   # on the line of the file it is about
        line = next(line for line in card.splitlines() if line.startswith(f"- `{ARTIFACTS[name]}`"))
        assert terms.licence in line and terms.origin in line, name


@pytest.mark.parametrize("name", list(LICENCES))
def test_readme_weights_table_names_each_licence(name):
    """README.md is written by hand; this keeps its table in step with falco/weights/licences.py."""
    weights = README.read_text().split("## Weights", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in weights.splitlines() if line.startswith(f"| {name} |"))
    terms = LICENCES[name]
    assert terms.url in row and terms.origin.split(",")[0] in row, row
    assert "non-commercial use only" in weights
