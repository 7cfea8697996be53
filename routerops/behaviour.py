"""What the router does with the replies it gets: copy fidelity and multi-round routing, measured on
the evaluation's router records (issue 14's figures; `metrics/evaluation.json` -> `router_behaviour`).

- **Copy fidelity**: of the episodes where some reply states a gold alias (`contains_gold` on an
  information block), the share whose answer is exactly right (format-valid EM). Below 1 means
  the router had the answer in front of it and did not write it.
- **Multi-round**: of the episodes whose first call was answered and the reply declined (no
  answer stated, `policy.extract_reply_answer`; a failed or refused call is counted apart, as
  `first_failed`), the share that asked again, the share whose second call went to
  a different model, and their EM (what the first model gave them is no answer, EM 0). Re-asks of
  a model already asked in the same episode are counted over all episodes.

Every share carries its count, so a share of a handful of episodes reads as what it is.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from routerops.evaluation import EvalRecord, contains_gold
from routerops.policy import extract_reply_answer

__all__ = ["RouterBehaviour", "after_decline_headroom", "first_declined_ids", "information_blocks", "router_behaviour"]

_INFO_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)


def information_blocks(response: str) -> list[str]:
    """The replies the router saw, in order (each information block's text)."""
    return [m.group(1).strip() for m in _INFO_RE.finditer(response)]


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@dataclass(frozen=True)
class RouterBehaviour:
    episodes: int
    with_calls: int  # episodes with at least one call
    gold_in_reply: int  # episodes where some reply states a gold alias
    copy_fidelity: float | None  # EM share of those
    first_failed: int  # episodes whose first call failed (refused, unknown model, HTTP error)
    first_declined: int  # episodes whose first call was answered with no answer stated
    asked_again: float | None  # share of those with a second call
    asked_other_model: float | None  # share of those whose second call went to another model
    em_after_decline: float | None  # EM over the first-declined episodes (the first model gave 0)
    multi_call: float | None  # share of all episodes with two calls or more
    reasked_same_model: float | None  # share of all episodes that asked one model twice
    calls_per_episode: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _first_declined(r: EvalRecord) -> bool:
    blocks = information_blocks(r.response)
    return bool(r.calls and blocks and r.calls[0].ok and extract_reply_answer(blocks[0]) is None)


def first_declined_ids(records: Iterable[EvalRecord]) -> set[str]:
    """Questions whose first router call was answered with no answer stated."""
    return {r.question_id for r in records if r.system == "router" and _first_declined(r)}


def after_decline_headroom(records: Iterable[EvalRecord]) -> dict[str, tuple[int, int]]:
    """Per system, (questions, exact matches) over the questions whose first router reply
    declined: what a second round could gain there (each single model asked alone, the oracle),
    beside what the router got."""
    recs = list(records)
    ids = first_declined_ids(recs)
    out: dict[str, tuple[int, int]] = {}
    for r in recs:
        if r.question_id in ids:
            n, em = out.get(r.system, (0, 0))
            out[r.system] = (n + 1, em + int(r.em))
    return dict(sorted(out.items()))


def router_behaviour(records: Iterable[EvalRecord]) -> RouterBehaviour:
    """Copy fidelity and multi-round figures over the `router` records among `records`."""
    recs = [r for r in records if r.system == "router"]
    gold = [r for r in recs if any(contains_gold(b, r.golden_answers) for b in information_blocks(r.response))]
    declined = [r for r in recs if _first_declined(r)]
    failed = sum(1 for r in recs if r.calls and information_blocks(r.response) and not r.calls[0].ok)
    again = [r for r in declined if len(r.calls) >= 2]
    other = [r for r in again if r.calls[1].model != r.calls[0].model]
    reasked = [r for r in recs if len({c.model for c in r.calls}) < len(r.calls)]
    n = len(recs)
    return RouterBehaviour(
        episodes=n, with_calls=sum(1 for r in recs if r.calls), gold_in_reply=len(gold),
        copy_fidelity=_share(sum(int(r.em) for r in gold), len(gold)),
        first_failed=failed, first_declined=len(declined), asked_again=_share(len(again), len(declined)),
        asked_other_model=_share(len(other), len(declined)),
        em_after_decline=_share(sum(int(r.em) for r in declined), len(declined)),
        multi_call=_share(sum(1 for r in recs if len(r.calls) >= 2), n),
        reasked_same_model=_share(len(reasked), n),
        calls_per_episode=_share(sum(len(r.calls) for r in recs), n))
