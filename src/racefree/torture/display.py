"""The ``racefree torture`` display with rich (the optional ``cli`` extra)."""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from racefree.torture.run import Progress, Result


class RichDisplay:
    """A live progress table while running; a results table and a verdict at the end."""

    def __init__(self) -> None:
        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=True)
        self.live.start()

    def show(self, p: Progress) -> None:
        table = Table(title=f"racefree torture  {p.elapsed:5.1f} / {p.seconds:.0f} s   "
                      f"SIGKILLs: {p.kills}")
        table.add_column("operation")
        table.add_column("acknowledged", justify="right")
        for kind, n in sorted(p.acked.items()):
            table.add_row(kind, str(n))
        self.live.update(table)

    def stop(self) -> None:
        self.live.stop()

    def final(self, r: Result) -> None:
        fs = Table(title="what the file system offers")
        fs.add_column("property")
        fs.add_column("found")
        fs.add_column("", justify="center")
        for probe in r.probe.probes:
            mark = {True: "[green]ok[/]", False: "[red]FAIL[/]", None: ""}[probe.ok]
            fs.add_row(probe.name, probe.result, mark)
        self.console.print(fs)
        for w in r.probe.warnings:
            self.console.print(f"[yellow]warning:[/] {w}")
        table = Table(title="checks")
        table.add_column("check")
        table.add_column("acked", justify="right")
        table.add_column("in flight", justify="right")
        table.add_column("result")
        for row in r.rows:
            result = "[green]ok[/]" if not row.problems else "[red]FAIL[/]\n" + "\n".join(
                row.problems[:10])
            table.add_row(row.check, str(row.acked), str(row.in_flight), result)
        self.console.print(table)
        if r.ok:
            self.console.print(f"[bold green]PASS[/]: {r.kills} SIGKILLs in {r.seconds:.1f} s "
                               f"(seed {r.seed})")
        else:
            self.console.print(f"[bold red]FAIL[/]: {r.kills} SIGKILLs in {r.seconds:.1f} s "
                               f"(seed {r.seed}); the run's files are kept in {r.root}")
