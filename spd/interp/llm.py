"""The async LLM client: bounded, paced, budgeted, retried, resumable.

    with ResultJournal(out_dir / "llm") as journal:
        summary = asyncio.run(LLMClient(config, journal).run(task, items))

`items` is an iterable or async iterable of `WorkItem`s and is read lazily: a worker takes the next item
only when it is free, and the prompt is rendered only then, so no run holds all its prompts. For each item:

1. key already answered in the journal -> nothing is sent (resume);
2. prompt rendered; worst case = prompt estimate + max_tokens at the price, reserved in the budget;
3. shared Retry-After pause, then an evenly spaced rate slot; the reservation is journaled (so a rerun
   counts it even if this process dies with the request in flight); the request, under a wall-clock timeout;
4. usage settles the reservation; the text (made storable: lone surrogates become U+FFFD) must be JSON,
   valid for the task's schema and check;
5. transient failures and bad output are retried by tenacity (exponential backoff with jitter); a
   Retry-After pauses every coroutine; each retry reserves and is paced like a first attempt;
6. one row per item goes to the journal (answer, or NULL output with its error, API keys redacted), as it
   arrives; it lists the journaled reservations it settles.

Too many failed items (`abort_error_rate` after `abort_min_calls`) stop the run with
`ErrorRateExceededError` once the rows saved so far are on disk.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential, wait_random

from spd.interp.budget import Budget, Reservation
from spd.interp.config import LLMConfig, ModelPrice
from spd.interp.errors import (
    BudgetExhaustedError,
    CallError,
    ErrorRateExceededError,
    InvalidOutputError,
    PermanentError,
    TransientError,
)
from spd.interp.keys import redact_api_keys, require_api_key
from spd.interp.pricing import estimate_prompt_tokens, resolve_price, worst_case_cost
from spd.interp.providers.base import ChatProvider, Completion
from spd.interp.rate_limit import PauseGate, RateLimiter
from spd.interp.results import ResultJournal, ResultRow, Status, storable_text, utc_now
from spd.interp.tasks import In, Out, Task, WorkItem

# Attempts whose usage we never see (timed out, connection lost mid-answer) may still be billed.
_UNKNOWN_USAGE_KINDS = frozenset({"timeout", "transport"})


def make_provider(config: LLMConfig, api_key: str) -> ChatProvider:
    """The SDK-backed provider for `config.provider` (imported lazily: the heuristic needs no SDK)."""
    if config.provider == "openai":
        from spd.interp.providers.openai import OpenAIChatProvider

        return OpenAIChatProvider(config, api_key)
    if config.provider == "anthropic":
        from spd.interp.providers.anthropic import AnthropicMessagesProvider

        return AnthropicMessagesProvider(config, api_key)
    raise ValueError(f"provider {config.provider!r} has no chat SDK")


@dataclass
class RunSummary:
    """Counts and money of one `run`; `aborted` holds the reason when the error rate stopped it."""

    task: str
    provider: str
    model: str
    budget_usd: float | None
    spent_before_usd: float
    n_items: int = 0
    n_already_done: int = 0
    n_ok: int = 0
    n_failed: int = 0
    n_skipped: int = 0
    n_requests: int = 0
    n_pauses: int = 0
    cost_usd: float | None = 0.0
    charged_usd: float = 0.0
    elapsed_s: float = 0.0
    aborted: str | None = None

    def counts(self) -> str:
        """What happened to the items so far, replays from the journal first (a rerun that asks nothing says so)."""
        replayed = f"replayed {self.n_already_done}, " if self.n_already_done else ""
        return f"{replayed}answered {self.n_ok}, failed {self.n_failed}, skipped {self.n_skipped}"


@dataclass
class _Attempts:
    """What the attempts for one item sent, used and cost."""

    sent: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost: float = 0.0
    charged: float = 0.0
    raw: str | None = None
    reservations: list[str] = field(default_factory=list)
    """Ids of the reservations journaled for the requests sent; the item's row settles them."""

    def add_usage(self, completion: Completion) -> None:
        if completion.input_tokens is not None:
            self.input_tokens = (self.input_tokens or 0) + completion.input_tokens
        if completion.output_tokens is not None:
            self.output_tokens = (self.output_tokens or 0) + completion.output_tokens


class _ItemSource:
    """Hands out items one at a time to many workers, from a sync or async iterable, never ahead of need."""

    def __init__(self, items: Iterable[WorkItem[Any]] | AsyncIterable[WorkItem[Any]]) -> None:
        self._sync = iter(items) if isinstance(items, Iterable) else None
        self._async = aiter(items) if self._sync is None else None  # type: ignore[arg-type]
        self._lock = asyncio.Lock()
        self._exhausted = False

    async def next(self) -> WorkItem[Any] | None:
        if self._exhausted:
            return None
        if self._sync is not None:
            item = next(self._sync, None)
        else:
            async with self._lock:  # an async generator cannot be advanced by two coroutines at once
                if self._exhausted:
                    return None
                item = await anext(self._async, None)  # type: ignore[arg-type]
        if item is None:
            self._exhausted = True
        return item


@dataclass
class _Run(Generic[In, Out]):
    """State shared by the workers of one run."""

    task: Task[In, Out]
    summary: RunSummary
    budget: Budget
    gate: PauseGate
    limiter: RateLimiter
    provider: ChatProvider | None
    source: _ItemSource
    queue: asyncio.Queue[ResultRow | _Finished]
    done: set[str]
    schema: dict[str, Any]
    floor_usd: float
    seen: set[str] = field(default_factory=set)
    progress: Any = None


@dataclass
class _Finished:
    error: BaseException | None


class LLMClient:
    """Answers tasks through the configured provider and saves each answer in `journal` as it arrives.

    Construction checks the API key and the price (for a budget) and raises before anything is sent.
    """

    def __init__(
        self,
        config: LLMConfig,
        journal: ResultJournal,
        *,
        provider: ChatProvider | None = None,
        show_progress: bool | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self._api_key = require_api_key(config)
        self.price: ModelPrice | None = resolve_price(config)
        self._provider = provider
        self.show_progress = config.progress if show_progress is None else show_progress
        self.last_summary: RunSummary | None = None

    # -- public entry points ---------------------------------------------------------------------------
    async def run(
        self,
        task: Task[In, Out],
        items: Iterable[WorkItem[In]] | AsyncIterable[WorkItem[In]],
        *,
        total: int | None = None,
    ) -> RunSummary:
        """Answer every item (or skip it when already answered); return the summary."""
        async for _row in self.stream(task, items, total=total):
            pass
        assert self.last_summary is not None
        return self.last_summary

    async def stream(
        self,
        task: Task[In, Out],
        items: Iterable[WorkItem[In]] | AsyncIterable[WorkItem[In]],
        *,
        total: int | None = None,
    ) -> AsyncIterator[ResultRow]:
        """Yield each new row in completion order (rows are already journaled when yielded).

        Leaving early: wrap in `contextlib.aclosing` so in-flight requests are cancelled at once.
        """
        config = self.config
        heuristic = config.provider == "heuristic"
        if heuristic and task.heuristic is None:
            raise ValueError(f"task {task.name!r} has no heuristic, so provider 'heuristic' cannot answer it")
        if total is None and hasattr(items, "__len__"):
            total = len(items)  # type: ignore[arg-type]
        started = time.perf_counter()
        summary = RunSummary(
            task=task.name,
            provider=config.provider,
            model=config.model_name,
            budget_usd=config.budget_usd,
            spent_before_usd=self.journal.spent_usd(),
            cost_usd=None if self.price is None else 0.0,
        )
        self.last_summary = summary
        gate = PauseGate()
        provider = None
        if not heuristic:
            provider = self._provider or make_provider(config, self._api_key or "")
        state: _Run[In, Out] = _Run(
            task=task,
            summary=summary,
            budget=Budget(config.budget_usd, spent_usd=self.journal.spent_usd()),
            gate=gate,
            limiter=RateLimiter(config.requests_per_minute, burst=config.rate_burst, gate=gate),
            provider=provider,
            source=_ItemSource(items),
            queue=asyncio.Queue(),
            done=self.journal.completed_keys(task.name, include_failed=not config.retry_failed),
            schema=task.json_schema(),
            floor_usd=self._worst_case(""),
        )
        state.progress = _Progress.start(self.show_progress, task.name, total)
        n_workers = 1 if heuristic else config.max_concurrent
        workers = [asyncio.create_task(self._work(state)) for _ in range(n_workers)]
        supervisor = asyncio.create_task(_supervise(workers, state.queue))
        try:
            while True:
                message = await state.queue.get()
                if isinstance(message, _Finished):
                    if message.error is not None:
                        if isinstance(message.error, ErrorRateExceededError):
                            summary.aborted = str(message.error)
                        raise message.error
                    break
                yield message
        finally:
            for task_ in (*workers, supervisor):
                task_.cancel()
            await asyncio.gather(*workers, supervisor, return_exceptions=True)
            if provider is not None and self._provider is None:
                await provider.aclose()
            self.journal.flush()
            summary.n_pauses = gate.n_pauses
            summary.elapsed_s = time.perf_counter() - started
            if state.progress is not None:
                state.progress.stop()

    # -- one worker ------------------------------------------------------------------------------------
    async def _work(self, state: _Run[In, Out]) -> None:
        while True:
            item = await state.source.next()
            if item is None:
                return
            state.summary.n_items += 1
            if item.key in state.seen:
                raise ValueError(f"key {item.key!r} appears twice in the items of task {state.task.name!r}")
            state.seen.add(item.key)
            if item.key in state.done:
                state.summary.n_already_done += 1
                if state.progress is not None:
                    state.progress.advance(state.summary)
                continue
            row = await self._answer(state, item)
            self._record(state, row)

    def _record(self, state: _Run[In, Out], row: ResultRow) -> None:
        self.journal.append(row)
        summary = state.summary
        if row.status == "ok":
            summary.n_ok += 1
        elif row.status == "failed":
            summary.n_failed += 1
        else:
            summary.n_skipped += 1
        if summary.cost_usd is not None and row.cost_usd is not None:
            summary.cost_usd += row.cost_usd
        summary.charged_usd += row.charged_usd or 0.0
        state.queue.put_nowait(row)
        if state.progress is not None:
            state.progress.advance(summary)
        judged = summary.n_ok + summary.n_failed
        config = self.config
        if judged >= config.abort_min_calls and summary.n_failed > config.abort_error_rate * judged:
            raise ErrorRateExceededError(
                f"task {state.task.name!r}: {summary.n_failed} of {judged} items failed, above "
                f"abort_error_rate={config.abort_error_rate}; the {summary.n_ok} answers saved so far stay in "
                f"{self.journal.directory} and a rerun asks only for the rest (last error: {row.error_kind}: {row.error})"
            )

    def _worst_case(self, prompt: str) -> float:
        if self.price is None:
            return 0.0
        return worst_case_cost(estimate_prompt_tokens(prompt, self.config), self.config, self.price)

    def _row(
        self,
        state: _Run[In, Out],
        item: WorkItem[In],
        started: float,
        status: Status,
        *,
        prompt: str | None = None,
        attempts: _Attempts | None = None,
        output: Out | None = None,
        error: CallError | None = None,
    ) -> ResultRow:
        acc = attempts or _Attempts()
        known_price = self.price is not None
        return ResultRow(
            key=item.key,
            task=state.task.name,
            provider=self.config.provider,
            model=self.config.model_name,
            status=status,
            prompt=prompt,
            raw_response=acc.raw,
            output=None if output is None else output.model_dump(mode="json"),
            input_tokens=acc.input_tokens,
            output_tokens=acc.output_tokens,
            cost_usd=acc.cost if known_price else None,
            charged_usd=acc.charged if known_price else None,
            latency_s=time.perf_counter() - started,
            attempts=acc.sent,
            error_kind=None if error is None else error.kind,
            # Providers echo what they were sent ("Incorrect API key provided: sk-..."): rows, stores built
            # from them, reports and the error-rate abort's message all take the error from here.
            error=None if error is None else redact_api_keys(str(error)),
            finished_at=utc_now(),
            session=self.journal.session,
            extra=dict(item.meta),
            reservations=tuple(acc.reservations),
        )

    async def _answer(self, state: _Run[In, Out], item: WorkItem[In]) -> ResultRow:
        started = time.perf_counter()
        task = state.task
        if state.provider is None:
            return self._answer_heuristically(state, item, started)
        if state.budget.exhausted_for(state.floor_usd):
            error = BudgetExhaustedError(f"budget ${self.config.budget_usd} is spent; not even an empty prompt fits")
            return self._row(state, item, started, "skipped", error=error)
        try:
            prompt = task.render_prompt(item.input)
        except Exception as e:  # one component's broken data must not end the run; the error rate guards
            error = PermanentError(f"could not render the prompt: {type(e).__name__}: {e}", kind="prompt_error")
            return self._row(state, item, started, "failed", error=error)
        worst = self._worst_case(prompt)
        acc = _Attempts()
        try:
            output = await self._attempt_with_retries(state, item, prompt, worst, acc)
        except BudgetExhaustedError as e:
            status: Status = "skipped" if acc.sent == 0 else "failed"
            return self._row(state, item, started, status, prompt=prompt, attempts=acc, error=e)
        except CallError as e:  # retries spent, or not worth retrying; `attempts` says how many were sent
            return self._row(state, item, started, "failed", prompt=prompt, attempts=acc, error=e)
        return self._row(state, item, started, "ok", prompt=prompt, attempts=acc, output=output)

    async def _attempt_with_retries(
        self, state: _Run[In, Out], item: WorkItem[In], prompt: str, worst: float, acc: _Attempts
    ) -> Out:
        """The first attempt directly; if it fails in a retryable way, tenacity owns every retry.

        Most items succeed at once, and tenacity's per-attempt bookkeeping costs more than the rest of the
        client together, so it is set up only when needed. The first failure is replayed as tenacity's
        attempt 1 (no request), so its backoff schedule and attempt count are the same as if it had run it.
        """
        retryable = (TransientError, InvalidOutputError)
        try:
            return await self._attempt(state, item, prompt, worst, acc)
        except retryable as e:
            if self.config.max_retries == 0:
                raise
            first_failure: list[BaseException] = [e]
        config = self.config
        retrying = AsyncRetrying(
            stop=stop_after_attempt(config.max_retries + 1),
            # Exponential backoff plus up to one initial step of random jitter, so retries spread out.
            wait=wait_exponential(multiplier=config.backoff_initial_s, max=config.backoff_max_s)
            + wait_random(0, config.backoff_initial_s),
            retry=retry_if_exception_type(retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if first_failure:
                    raise first_failure.pop()
                return await self._attempt(state, item, prompt, worst, acc)
        raise AssertionError("tenacity stopped without an answer or an exception")  # reraise=True prevents this

    async def _attempt(
        self, state: _Run[In, Out], item: WorkItem[In], prompt: str, worst: float, acc: _Attempts
    ) -> Out:
        """One request: reserve, wait for pause and rate slot, send, settle, parse."""
        assert state.provider is not None
        reservation: Reservation = await state.budget.reserve(worst)
        charge = 0.0
        try:
            await state.limiter.acquire()
            if self.price is not None:  # before the request leaves: a rerun counts it even if this process dies
                acc.reservations.append(self.journal.reserve(worst))
            charge = worst  # from here on, an interruption may leave a billed request behind
            acc.sent += 1
            state.summary.n_requests += 1
            try:
                async with asyncio.timeout(self.config.timeout_s):
                    completion = await state.provider.complete(prompt, state.schema, state.task.name)
            except TimeoutError:
                raise TransientError(f"no answer within timeout_s={self.config.timeout_s}", kind="timeout") from None
            except TransientError as e:
                if e.retry_after_s is not None:
                    state.gate.pause(min(e.retry_after_s, self.config.max_retry_after_s))
                if e.kind not in _UNKNOWN_USAGE_KINDS:
                    charge = 0.0
                raise
            except PermanentError:
                charge = 0.0
                raise
            acc.add_usage(completion)
            # The one place provider text enters: from here on it is text UTF-8 can store.
            text = storable_text(completion.text)
            acc.raw = text
            if completion.input_tokens is not None and completion.output_tokens is not None and self.price is not None:
                charge = self.price.cost(completion.input_tokens, completion.output_tokens)
                acc.cost += charge
            if completion.truncated:
                raise PermanentError(
                    f"answer cut at max_tokens={self.config.max_tokens} (finish reason {completion.finish_reason!r}); "
                    "raise llm.max_tokens",
                    kind="truncated",
                )
            return state.task.parse(item.input, text)
        finally:
            acc.charged += charge
            state.budget.settle(reservation, charge)

    def _answer_heuristically(self, state: _Run[In, Out], item: WorkItem[In], started: float) -> ResultRow:
        task = state.task
        assert task.heuristic is not None
        acc = _Attempts(sent=1)
        try:
            output = task.heuristic(item.input)
            acc.raw = output.model_dump_json()
            if task.check is not None:
                task.check(item.input, output)
        except Exception as e:
            error = PermanentError(f"heuristic failed: {type(e).__name__}: {e}", kind="heuristic_error")
            return self._row(state, item, started, "failed", attempts=acc, error=error)
        return self._row(state, item, started, "ok", attempts=acc, output=output)


async def _supervise(workers: list[asyncio.Task[None]], queue: asyncio.Queue[ResultRow | _Finished]) -> None:
    """Tell the consumer when all workers are done, or the first error any of them raised."""
    try:
        await asyncio.gather(*workers)
    except Exception as e:
        queue.put_nowait(_Finished(e))
    else:
        queue.put_nowait(_Finished(None))


class _Progress:
    """A rich progress bar: items done, answers/failures/skips, money."""

    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress = progress
        self._task_id = task_id

    @classmethod
    def start(cls, enabled: bool, name: str, total: int | None) -> _Progress | None:
        if not enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
        )
        progress.start()
        return cls(progress, progress.add_task(name, total=total, status=""))

    def advance(self, summary: RunSummary) -> None:
        cost = "" if summary.cost_usd is None else f" ${summary.cost_usd:.4f}"
        status = f"{summary.counts()}{cost}"
        self._progress.update(self._task_id, advance=1, status=status)

    def stop(self) -> None:
        self._progress.stop()


def run_llm(
    config: LLMConfig,
    journal_dir: Path,
    task: Task[In, Out],
    items: Iterable[WorkItem[In]] | AsyncIterable[WorkItem[In]],
    *,
    total: int | None = None,
) -> RunSummary:
    """Synchronous entry point for stages: open the journal, answer everything, close the journal."""
    with ResultJournal(journal_dir) as journal:
        client = LLMClient(config, journal)
        return asyncio.run(client.run(task, items, total=total))
