"""The node's provider: the provide list plus the sweep, woken by APScheduler.

APScheduler's ``AsyncIOScheduler`` runs on the node's loop with two jobs: one date
timer for the next due key (re-armed after every batch of work: one timer, never one
job per CID), and a poll every few seconds that notices keys the CLI added to the
table while the node runs. The work itself runs in ``run``'s task group, so stopping
the node cancels it between two store transactions: nothing is half-written.

    reprovider = Reprovider(ProvideListStore(engine), SqlClaimStore(engine), router, messenger, host_info)
    async with anyio.create_task_group() as tg:
        await tg.start(reprovider.run)
        ...
        tg.cancel_scope.cancel()          # or reprovider.stop()
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import anyio
import anyio.abc
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..dht import DHT
from ..errors import StoreError
from ..network.api import KadMessenger
from ..routingtable.api import PrefixCounts
from ..types import PeerInfo
from .api import AddResult, ClaimStore, ProvideList, SweepConfig, VisitReport
from .metrics import ProvideMetrics
from .service import (
    STATE_CYCLE_START,
    STATE_INTERVAL,
    STATE_ORDER,
    STATE_PREFIX_LEN,
    ProvideListService,
    throughput_state,
)
from .sweep import Sweep

log = logging.getLogger(__name__)
# APScheduler runs a job as an asyncio task of its own, and its shutdown cancels a
# running job with ``Task.cancel``, past any anyio shield: a store read stopped that way
# is over (the job's task ends with it), not a failure to log with a traceback.
_STOPPED_MID_JOB = "provider: a scheduled store read was stopped by the shutdown"

NEXT_JOB = "reprovide-next"
POLL_JOB = "provide-poll"
METRICS_JOB = "provide-metrics"
METRICS_EVERY = 60.0  # a full count of a million-key list takes a moment: not every poll
BEHIND_WARNING_EVERY = 3600.0
STORE_RETRY = 30.0  # after a store error, try again this much later


class Reprovider(ProvideListService):
    def __init__(
        self,
        store: ProvideList,
        claims: ClaimStore,
        dht: DHT,
        messenger: KadMessenger,
        self_info: Callable[[], PeerInfo],
        *,
        config: SweepConfig | None = None,
        clock: Callable[[], float] = time.time,
        poll_interval: float = 2.0,
        metrics: ProvideMetrics | None = None,
        region_sizes: PrefixCounts | None = None,
    ):
        config = config or SweepConfig()
        super().__init__(store, claims, interval=config.interval, clock=clock)
        self.dht = dht
        self.messenger = messenger
        self.self_info = self_info
        self.config = config
        self.poll_interval = poll_interval
        self.metrics = metrics or ProvideMetrics()
        self.region_sizes = region_sizes  # a full routing table: exact region sizes for the sweep
        self.sweep: Sweep | None = None
        self._wake = anyio.Event()
        self._armed_for: int | None = None
        self._scheduler: AsyncIOScheduler | None = None
        self._cancel: anyio.CancelScope | None = None
        self._last_behind_warning = float("-inf")

    # --- lifecycle --------------------------------------------------------------------

    async def open(self) -> Sweep:
        """Load (or create, on first start) the persisted schedule state."""
        if self.sweep is not None:
            return self.sweep
        now = int(self.clock())
        state = await self.store.get_state()
        if STATE_ORDER not in state or STATE_CYCLE_START not in state:
            # The schedule of a shared list is the store's: the first process to start sets it.
            await self.store.add_state({STATE_ORDER: format(secrets.randbits(256), "064x"), STATE_CYCLE_START: str(now)}, now)
            state = await self.store.get_state()
        if state.get(STATE_INTERVAL) != str(self.interval):
            await self.store.set_state({STATE_INTERVAL: str(self.interval)}, now)
        prefix_len = state.get(STATE_PREFIX_LEN)
        self.sweep = Sweep(
            self.store,
            self.claims,
            self.dht,
            self.messenger,
            self.self_info,
            order=int(state[STATE_ORDER], 16),
            cycle_start=int(state[STATE_CYCLE_START]),
            prefix_len=int(prefix_len) if prefix_len else None,
            config=self.config,
            clock=self.clock,
            on_slice=lambda prefix: self.metrics.region_started(str(prefix)),
            region_sizes=self.region_sizes,
        )
        return self.sweep

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Provide and reprovide until cancelled (or ``stop``)."""
        await self.open()
        scheduler = AsyncIOScheduler(timezone=UTC)
        scheduler.add_job(self._poll, IntervalTrigger(seconds=self.poll_interval), id=POLL_JOB, coalesce=True, max_instances=1)
        scheduler.add_job(self._refresh_metrics, IntervalTrigger(seconds=METRICS_EVERY), id=METRICS_JOB, coalesce=True, max_instances=1)
        with anyio.CancelScope() as scope:
            self._cancel = scope
            scheduler.start()
            self._scheduler = scheduler
            try:
                await self._arm()
                await self._refresh_metrics()
                task_status.started()
                while True:
                    await self._wake.wait()
                    self._wake = anyio.Event()
                    await self._work()
            finally:
                self._scheduler = None
                scheduler.shutdown(wait=False)

    def stop(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()

    # --- the Provider API -------------------------------------------------------------

    async def start_provide(self, cids: Iterable[str | bytes]) -> AddResult:
        result = await super().start_provide(cids)
        if result.added:
            self._wake.set()  # new keys are due now
        return result

    # --- work -------------------------------------------------------------------------------

    async def run_due(self, due_by: float | None = None) -> list[VisitReport]:
        """Visit slices until nothing is due now (or, given ``due_by``, nothing due by
        then: a simulation measures a cycle to the second); return what was done."""
        sweep = await self.open()
        reports: list[VisitReport] = []
        while True:
            if due_by is not None and ((due := await self.next_unclaimed_due()) is None or due > due_by):
                break
            started = self.clock()
            report = await sweep.visit(started)
            if report is None:
                break
            reports.append(report)
            self.metrics.region_finished(report)
            await self._record_progress(report, self.clock() - started)
        return reports

    async def _work(self) -> None:
        if not self.self_info().addrs:
            # Servers drop provider records without addresses (go does not send them either).
            log.info("provider: no listen addresses yet, providing later")
            self._arm_at(self.clock() + self.config.retry_after)
            return
        try:
            await self.run_due()
            # Work still due now is another process's (a lost race for a claim): look again shortly.
            await self._arm(not_before=self.clock() + self.poll_interval)
        except StoreError as exc:
            log.warning("provider: store error, retrying in %ds: %s", STORE_RETRY, exc)
            self._arm_at(self.clock() + STORE_RETRY)
            return
        status = await self.status()
        self.metrics.update(status)
        now = self.clock()
        if status.falling_behind and now - self._last_behind_warning >= BEHIND_WARNING_EVERY:
            self._last_behind_warning = now
            log.warning(
                "provider is falling behind: %d of %d keys overdue, cycle expected to end %s (interval %s h); "
                "fewer keys or more provide capacity needed",
                status.overdue,
                status.keys,
                status.expected_cycle_end.isoformat() if status.expected_cycle_end else "never",
                round(self.interval / 3600, 2),
            )

    async def _record_progress(self, report: VisitReport, seconds: float) -> None:
        """Keep the figures the CLI's status needs: this process's throughput (a moving
        average; processes sharing the store each keep their own) and the prefix length."""
        assert self.sweep is not None
        name = throughput_state(self.sweep.owner)
        state = await self.store.get_state()
        rate = float(state.get(name, "0") or 0)
        if report.keys and seconds > 0:
            sample = report.keys / seconds
            rate = sample if rate == 0 else 0.8 * rate + 0.2 * sample
        values = {name: f"{rate:.3f}"}
        if self.sweep.prefix_len is not None:
            values[STATE_PREFIX_LEN] = str(self.sweep.prefix_len)
        await self.store.set_state(values, int(self.clock()))

    # --- the timer --------------------------------------------------------------------------

    async def _arm(self, not_before: float | None = None) -> None:
        """Point the one timer at the earliest key due that no other process has
        claimed (or wake now if it is due). The poll notices claims that expire."""
        due = await self.next_unclaimed_due()
        self._armed_for = due
        if due is None:
            if self._scheduler is not None and self._scheduler.get_job(NEXT_JOB):
                self._scheduler.remove_job(NEXT_JOB)
            return
        self._arm_at(max(due, not_before or due))

    async def next_unclaimed_due(self) -> int | None:
        """The earliest ``next_due_at`` among keys no other process has claimed."""
        sweep = await self.open()
        return await self.store.next_due_for(sweep.owner, int(self.clock()))

    def _arm_at(self, when: float) -> None:
        if when <= self.clock() or self._scheduler is None:
            self._wake.set()
            return
        self._scheduler.add_job(
            self._fire,
            DateTrigger(run_date=datetime.fromtimestamp(when, UTC)),
            id=NEXT_JOB,
            replace_existing=True,
            misfire_grace_time=None,  # late (a suspended machine) is still run, never skipped
        )

    async def _fire(self) -> None:
        self._wake.set()

    async def _poll(self) -> None:
        """Notice keys added by another process (the CLI), or freed by a claim that
        expired: they are due now."""
        try:
            due = await self.next_unclaimed_due()
        except StoreError as exc:
            log.info("provider: poll failed: %s", exc)
            return
        except asyncio.CancelledError:  # see _STOPPED_MID_JOB
            log.debug(_STOPPED_MID_JOB)
            return
        if due is not None and due != self._armed_for and due <= self.clock():
            self._wake.set()

    async def _refresh_metrics(self) -> None:
        try:
            self.metrics.update(await self.status())
        except StoreError as exc:
            log.info("provider: metrics refresh failed: %s", exc)
        except asyncio.CancelledError:  # see _STOPPED_MID_JOB
            log.debug(_STOPPED_MID_JOB)
