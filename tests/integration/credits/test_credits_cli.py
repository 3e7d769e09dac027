"""`tiergate credits grant|ls|ledger|void` against the real daemon app on loopback."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

from tests.integration.credits.conftest import API_TOKEN, CreditsDaemon
from tiergate.cli import main


async def test_the_cli_grants_lists_pages_and_voids(credits_daemon: CreditsDaemon) -> None:
    env = {
        "TIERGATE_DAEMON_URL": str(credits_daemon.client.make_url("/")),
        "TIERGATE_API_TOKEN": API_TOKEN,
        "TIERGATE_ACTOR": "ops-bot",
    }

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, ["credits", *args], env=env)

    def printed(result: Result) -> list[str]:  # the daemon's own log lines share the test's stdout
        return [line for line in result.output.splitlines() if "[info" not in line]

    grant_args = (
        "grant",
        "t_1",
        "ai_credits",
        "12.5",
        "--reason",
        "pilot",
        "--for",
        "14d",
        "--idempotency-key",
        "k1",
    )
    done = await asyncio.to_thread(run, *grant_args)
    assert done.exit_code == 0, done.output
    line = printed(done)[0]
    assert line.startswith("t_1: granted 12.5 ai_credits (cg_") and line.endswith("; balance 12.5")
    again = await asyncio.to_thread(run, *grant_args)  # the same key: the same grant, no second one
    assert again.exit_code == 0 and printed(again)[0] == line
    grant_id = line.split("(")[1].split(")")[0]
    listed = printed(await asyncio.to_thread(run, "ls", "t_1"))
    assert listed[0].startswith("ai_credits: 12.5, next expiry 20")
    assert listed[1].startswith(f"  {grant_id} 12.5/12.5 promotional p50 manual until ") and listed[
        1
    ].endswith("# pilot")
    voided = await asyncio.to_thread(run, "void", "t_1", grant_id, "--reason", "mistake")
    assert (voided.exit_code, printed(voided)) == (0, [f"t_1: {grant_id} voided 12.5"])
    ledger = printed(await asyncio.to_thread(run, "ledger", "t_1", "--limit", "1"))
    assert ledger[0].split()[2:5] == ["grant", "12.5", "ai_credits"] and ledger[1].startswith(
        "# more: --after "
    )
    refused = await asyncio.to_thread(run, "grant", "t_1", "gems", "1", "--reason", "x")
    assert refused.exit_code == 1 and "400" in refused.output and "known: ['ai_credits']" in refused.output
    refused = await asyncio.to_thread(run, "void", "t_1", "cg_nope")
    assert refused.exit_code == 1 and "404" in refused.output
