"""Where a service keeps its state: never inside the package or the Bento."""

from __future__ import annotations

from pathlib import Path

from routerops.config import load_params
from routerops.serving import keys_db_path, serving_candidates, state_dir


def test_state_lives_under_bentoml_home_unless_told_otherwise() -> None:
    home = Path.home() / "bentoml" / "routerops"
    cases = [
        ({}, home, home / "keys.sqlite"),
        ({"BENTOML_HOME": "/srv/bento"}, Path("/srv/bento/routerops"), Path("/srv/bento/routerops/keys.sqlite")),
        ({"BENTOML_HOME": "/srv/bento", "ROUTEROPS_STATE_DIR": "/state"}, Path("/state"), Path("/state/keys.sqlite")),
        ({"ROUTEROPS_STATE_DIR": "/state", "ROUTEROPS_KEYS_DB": "/keys/k.db"}, Path("/state"), Path("/keys/k.db")),
        ({"ROUTEROPS_STATE_DIR": ""}, home, home / "keys.sqlite"),  # empty means unset
    ]
    for env, state, keys in cases:
        assert (state_dir(env), keys_db_path(env)) == (state, keys), env


def test_a_relative_response_cache_moves_into_the_state_dir(repo_root) -> None:
    candidates = load_params(repo_root / "params.yaml").candidates
    assert candidates.cache_path == ".routerops/cache/responses.sqlite"
    env = {"ROUTEROPS_STATE_DIR": "/state"}
    assert serving_candidates(candidates, env).cache_path == "/state/responses.sqlite"
    absolute = candidates.model_copy(update={"cache_path": "/var/cache/r.sqlite"})
    assert serving_candidates(absolute, env) == absolute
    off = candidates.model_copy(update={"cache_path": None})
    assert serving_candidates(off, env) == off
    assert serving_candidates(candidates, env).model_dump(exclude={"cache_path"}) == candidates.model_dump(
        exclude={"cache_path"})
