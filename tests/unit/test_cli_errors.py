"""Bad CLI input ends in one line naming the problem, never a traceback."""

from __future__ import annotations

from tests.support.cli import invoke as run_cli


def test_unknown_stack_subcommand_is_one_line_error() -> None:
    proc = run_cli("stack", "frobnicate")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "No such command 'frobnicate'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_bad_kafka_nodes_value_is_rejected_clearly() -> None:
    proc = run_cli("stack", "up", "--no-install", "--kafka-nodes", "2")
    assert proc.returncode == 1
    assert "--kafka-nodes must be 1 or 3, not 2" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_command_has_help_with_an_example() -> None:
    for args in (
        ("stack", "up"),
        ("stack", "down"),
        ("stack", "status"),
        ("db", "upgrade"),
        ("demo",),
        ("relay-demo",),
        ("run",),
        ("serve",),
        ("stream",),
        ("worker",),
        ("lag",),
        ("replay",),
        ("console",),
    ):
        proc = run_cli(*args, "--help")
        assert proc.returncode == 0, args
        assert "Example: relaybus" in proc.stdout, args


def test_unknown_shop_process_names_are_one_line_errors() -> None:
    for args, hint in (
        (("serve", "nope"), "use one of orders-api, gateway"),
        (("stream", "nope"), "use one of saga"),
        (("worker", "nope"), "registered name (inventory, orders, payments)"),
        (("run", "--only", "nope"), "unknown process nope"),
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert hint in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, args


def test_bad_settings_are_one_line_errors_that_name_the_variable_not_the_value() -> None:
    secret = "s3cr3t-pw"
    for env, args, expected in (
        ({"RELAYBUS_ADMISSION_USER_RATE": "-1"}, ("stream", "admission"), "USER_RATE"),
        (
            # 20 tokens at 0.0001/s take 200 000 s to refill: over the 86 400 s TTL.
            {"RELAYBUS_ADMISSION_USER_RATE": "0.0001"},
            ("stream", "admission"),
            "must refill within RELAYBUS_ADMISSION_DECISION_TTL",
        ),
        (
            {"RELAYBUS_DATABASE_URL": f"postgresql+asyncpg://u:{secret}@host:notaport/db"},
            ("outbox", "status"),
            "RELAYBUS_DATABASE_URL: not a database URL",
        ),
    ):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("relaybus: error: invalid settings: ")
        assert expected in lines[0]
        assert secret not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr + proc.stdout
