"""``bench run --fuse K``: up to K seeds of one cell and method trained as one fused network.

A small ResNet leaves most of a GPU idle, and runs packed as processes take turns on it (README,
Speed). :func:`bench.fused.fuse` makes K runs one network whose every kernel is K times larger
(HFTA, Wang et al., MLSys 2021). Here that trains real runs: :func:`group_runs` puts together the
pending runs that differ only in their seeds (``seed``, ``data_seed``), :func:`execute_fused`
trains each group as one network and returns one :class:`bench.execute.RunResult` per run, which
the driver stores as it stores runs trained alone.

What each run keeps as its own (so a fused run is the run trained alone, up to float rounding;
tests/test_fused_runs.py compares the two):

- its data (its noisy labels, pool and meta set), its initial weights (drawn from its own stream
  of torch's global RNG, started by ``torch.manual_seed`` of its seed as
  :func:`bench.execute.execute` does, in the order its method draws its networks), and its batch
  order, crops and flips (from its own generator: :class:`bench.fused.FusedLoader`,
  :class:`bench.fused.FusedCycle`); a stage with a seed of its own (CurveNet's probe,
  ``Run.reseeded``) reseeds each run's stream and generator from its own spec;
- its loss: the method's ``loss_fn`` (or each run's own, ``Run.per_run``: a loss built from the
  run's class counts) is called on each run's rows (``Run.run_losses``) and the K losses are
  summed, so each run's weights get exactly its own gradient;
- its per-sample tables (``Run.pooled``: the K pools interleaved, row i K + k run k's sample i,
  as the fused batches' ``idx`` index them), split back into each run's records;
- its history, test accuracy and result. A run that diverges is recorded as failed at that
  epoch while the others train on (its NaNs stay in its own weights: grouped convolutions,
  per-channel BatchNorm, element-wise SGD).

Which methods: those with ``fusable = True`` (``methods.base.Method``; ``Method.fuses(spec)``
may exclude settings), which train through the run's services (``model``, ``net``, ``loader``,
``epochs``, ``log``, ``record``, ``per_run``, ``pooled``) with a loss per run: CE and Focal
(:func:`bench.train.train_classifier`, ``Run.run_losses``); Class-Balanced and LDAM-DRW (a loss
per run from its own class counts; LDAM's cosine classifier fuses itself,
``methods.ldam_drw.NormedLinear.fused``); MW-Net (:class:`methods.meta.MetaStep`, which steps
each fused run as its own; its weighting nets are fused too); CurveNet (both stages: the probes
fused, each from its run's probe seed and cached per run; the curves centred per run; the
CurveNets fused; +DRW from each run's class counts; each run's own pseudo-meta set, the runs
alone where their sizes differ); Co-teaching (both networks fused, each run's small-loss
selection over its own rows, of its own count with ``tau=realised``); O2U-Net
(each run's scores and kept subset its own: a ``PerRun`` of loader ``indices``; with
``drop_rate=realised`` the subsets' sizes differ and each run retrains alone, ``Run.alone``, so
not with ``retrain=pretrained`` too); AUM (its scoring runs fused, each run's threshold samples
its own, pooled labels; each run retrains alone on its kept subset, ``Run.alone``, since the
subsets' sizes differ and fused batches need one).
A group checkpoints as one (its key is :meth:`FusedGroup.key`); a killed group resumes when the
same runs are asked for with the same ``--fuse``.

Speed: on this suite's 2-core CPU fusing does not pay at batch 128 (4 fused runs cost 3.9-4.3x
one run; ``python -m bench timing --pack 4 --pack-mode fused``); it is meant for GPUs, where it
has not been measured yet (README, Speed).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import methods
from bench.errors import BenchError
from bench.fused import FusedLoader, fuse, interleave, run_state, runs_images
from bench.spec import RunSpec
from bench.train import Diverged, accuracy_report, check_finite, check_finite_model, nonfinite_tensor
from methods.base import PerRun


@dataclass(frozen=True)
class FusedGroup:
    """Runs trained as one fused network: same cell, method, settings; different seeds."""

    specs: tuple[RunSpec, ...]

    def key(self) -> str:
        """16 hex digits from the members' keys (the group's checkpoint is named after it)."""
        blob = "fused:" + ",".join(s.key() for s in self.specs)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def members(item) -> tuple[RunSpec, ...]:
    """The runs of a queue item: a group's specs, or the one spec."""
    return item.specs if isinstance(item, FusedGroup) else (item,)


def fuse_key(spec: RunSpec) -> str:
    """Runs with one fuse key may be fused: their specs differ in the seeds at most."""
    return spec.replace(seed=0, data_seed=0).key()


def group_runs(specs: Sequence[RunSpec], fuse_at_most: int) -> list:
    """``specs`` as a queue of specs and :class:`FusedGroup` s of up to ``fuse_at_most`` runs of
    a fusable method that differ only in their seeds, in the order of each group's first run."""
    if fuse_at_most < 1:
        raise BenchError(f"--fuse must be at least 1, got {fuse_at_most}")
    queue: list = []
    open_groups: dict[str, list] = {}
    for spec in specs:
        if fuse_at_most == 1 or not methods.get(spec.method).fuses(spec):
            queue.append(spec)
            continue
        group = open_groups.get(fuse_key(spec))
        if group is None or len(group) == fuse_at_most:
            group = open_groups[fuse_key(spec)] = []
            queue.append(group)
        group.append(spec)
    return [(FusedGroup(tuple(item)) if len(item) > 1 else item[0]) if isinstance(item, list) else item
            for item in queue]


class _Histories:
    """The members' histories and which of them diverged, as checkpoint state (Run.epochs)."""

    def __init__(self, fused: FusedRun):
        self.fused = fused

    def state_dict(self) -> dict:
        return {"histories": [list(r.history) for r in self.fused.members], "failed": dict(self.fused.failed)}

    def load_state_dict(self, state: dict) -> None:
        for run, history in zip(self.fused.members, state["histories"]):
            run.history = list(history)
        self.fused.failed = dict(state["failed"])


class _Generators:
    """The members' data generators (orders, crops, flips), as checkpoint state."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = generators

    def state_dict(self) -> dict:
        return {"states": [g.get_state() for g in self.generators]}

    def load_state_dict(self, state: dict) -> None:
        for g, s in zip(self.generators, state["states"]):
            g.set_state(s)


class FusedRun:
    """What ``Method.fit`` of a fusable method is handed for a group: the services of
    :class:`methods.base.Run` it uses, for K runs at once (no ``data``: each run has its own).
    ``members`` are the K runs' own ``Run`` s (data, generator, history, records); the first
    also holds the group's checkpoint."""

    def __init__(self, members: Sequence, layout: str):
        self.members = list(members)
        self.lead = self.members[0]
        self.layout = layout
        self.failed: dict[int, str] = {}  # member -> why it diverged
        # each member's stream of torch's global RNG (its state after the member's last draw) and seed
        self._rng: list[torch.Tensor | None] = [None] * len(self.members)
        self._seeds = [run.spec.seed for run in self.members]
        self._test_loader = None
        self._architecture: nn.Module | None = None
        first = self.lead.data
        for run in self.members[1:]:
            if run.data.x_test.shape != first.x_test.shape or not np.array_equal(run.data.y_test, first.y_test):
                raise BenchError("fused runs need one test set")

    # the same for every member (the spec: up to its seeds)
    spec = property(lambda self: self.lead.spec)
    device = property(lambda self: self.lead.device)
    params = property(lambda self: self.lead.params)
    num_classes = property(lambda self: self.lead.num_classes)
    channels_last = property(lambda self: self.lead.channels_last)
    step_mode = property(lambda self: self.lead.step_mode)
    first_drop = property(lambda self: self.lead.first_drop)

    @property
    def runs(self) -> int:
        return len(self.members)

    def autocast(self):
        return self.lead.autocast()

    def step_graph(self, fn, **kwargs):
        return self.lead.step_graph(fn, **kwargs)

    def step_forward(self, model: nn.Module, loader):
        return self.lead.step_forward(model, loader)

    def step_forwards(self, models, loader):
        return self.lead.step_forwards(models, loader)

    compile_mode = property(lambda self: self.lead.compile_mode)

    def sgd(self, params, lr: float | None = None):
        return self.lead.sgd(params, lr)

    def lr_at(self, epoch: int) -> float:
        return self.lead.lr_at(epoch)

    def trained_s(self) -> float:
        return self.lead.trained_s()

    @property
    def member_runs(self) -> list:
        """The K runs' own ``Run`` s (each with its spec and data)."""
        return self.members

    def pooled(self, get):
        """A per-sample table of the K pools as the fused batches index it: ``get(run)`` of each
        member (an array or tensor with one row per pool sample), interleaved (row i K + k: run
        k's sample i)."""
        parts = [get(run) for run in self.members]
        if isinstance(parts[0], torch.Tensor):
            return interleave(parts)
        parts = [np.asarray(part) for part in parts]
        return np.stack(parts, 1).reshape(-1, *parts[0].shape[1:])

    def _drawn(self, k: int, build):
        """``build()`` on member k's own stream of torch's global RNG: the stream starts at
        ``torch.manual_seed`` of its seed (the spec's, as ``bench.execute.execute`` seeds a run
        alone; a :meth:`reseeded` stage's inside it) and goes on where the member's last draw left
        it, so its networks are drawn as they would be alone, in the order its method draws them."""
        if self._rng[k] is None:
            torch.manual_seed(self._seeds[k])
        else:
            torch.set_rng_state(self._rng[k])
        built = build()
        self._rng[k] = torch.get_rng_state()
        return built

    def model(self, num_classes: int | None = None, *, adapt=None) -> nn.Module:
        """The members' fresh backbones (with ``num_classes`` outputs and changed by ``adapt``, as
        ``Run.model``), each drawn from its run's own RNG stream, fused."""
        models = [self._drawn(k, lambda run=run: run.model(num_classes, adapt=adapt))
                  for k, run in enumerate(self.members)]
        self._architecture = models[0]  # what unfused() gives each run's weights back in
        return fuse(models, self.layout)

    def net(self, make) -> nn.Module:
        """The members' auxiliary networks (weighting nets), each drawn from its run's own RNG
        stream (before or after its backbone, as its method draws them), fused in the rows layout."""
        return fuse([self._drawn(k, lambda run=run: run.net(make)) for k, run in enumerate(self.members)], "rows")

    @contextlib.contextmanager
    def reseeded(self, seed_of):
        """``Run.reseeded`` for each member: inside, member k's RNG stream starts at
        ``seed_of(its spec)`` and its loaders draw from a generator of that seed; both as before
        after."""
        saved = self._rng, self._seeds
        with contextlib.ExitStack() as stack:
            for run in self.members:  # each member's loader generator (and torch's RNG, forked)
                stack.enter_context(run.reseeded(seed_of))
            self._seeds = [seed_of(run.spec) for run in self.members]
            self._rng = [None] * self.runs
            try:
                yield
            finally:
                self._rng, self._seeds = saved

    def loader(self, split: str = "train", **kwargs) -> FusedLoader:
        """The members' loaders as one; a :class:`methods.base.PerRun` argument (O2U-Net's kept
        ``indices``) gives each member its own value."""
        if split == "test":
            raise ValueError("a fused group evaluates through FusedRun.evaluate")
        return FusedLoader([run.loader(split, **{name: value[k] if isinstance(value, PerRun) else value
                                                 for name, value in kwargs.items()})
                            for k, run in enumerate(self.members)], self.layout)

    def alone(self, train) -> PerRun:
        """``Run.alone``: ``train(run)`` for each member in turn, on its own (a :class:`_Alone`:
        the member's data and history, its networks from its RNG stream, its epochs checkpointed
        in the group's checkpoint), a :class:`PerRun` of the models. A member that diverged earlier
        is skipped (None); one whose stage fails (it diverges, or the method refuses its data)
        fails alone and the others train on."""
        models = PerRun()
        for k in range(self.runs):
            model = None
            if k not in self.failed:
                try:
                    model = train(_Alone(self, k))
                except BenchError as exc:
                    self.failed[k] = str(exc)
            models.append(model)
        if len(self.failed) == self.runs:
            raise BenchError(self.failed[0])
        return models

    def per_run(self, make) -> PerRun:
        """``make(run)`` for each member: what a run builds from its own data (its loss)."""
        return PerRun(make(run) for run in self.members)

    def run_losses(self, loss_fn, logits, y, idx, epoch) -> torch.Tensor:
        """Each run's batch loss from its own rows (``idx`` back to its own pool positions), by
        ``loss_fn`` or, for a :class:`methods.base.PerRun` of losses, by the run's own."""
        K = self.runs
        fns = loss_fn if isinstance(loss_fn, PerRun) else [loss_fn] * K
        return torch.stack([fns[k](logits[k::K], y[k::K], idx[k::K] // K, epoch) for k in range(K)])

    def epochs(self, count: int, *, stage: str = "train", state: dict | None = None):
        state = {**(state or {}), "fused_histories": _Histories(self),
                 "fused_generators": _Generators([r.generator for r in self.members])}
        return self.lead.epochs(count, stage=stage, state=state)

    def record(self, name: str, values) -> None:
        """Split a per-sample table of the fused pool (row i K + k: run k's sample i, as the fused
        batches' ``idx`` and an unshuffled fused loader's rows) into each member's record."""
        for k, run in enumerate(self.members):
            run.record(name, values[k::self.runs])

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> list[dict]:
        """Each member's test report (``Run.evaluate``'s), from one pass of the fused network."""
        if self._test_loader is None:
            self._test_loader = self.lead.loader("test")
        was_training = model.training
        model.eval()
        preds, targets = [], []
        for x, y, _ in self._test_loader:
            logits = model(runs_images([x] * self.runs, self.layout))
            preds.append(logits.argmax(1).view(-1, self.runs))  # row n K + k: run k's sample n
            targets.append(y)
        model.train(was_training)
        pred, target = torch.cat(preds).cpu().numpy(), torch.cat(targets).cpu().numpy()
        return [accuracy_report(pred[:, k], target, self.num_classes, run.data.shot_counts)
                for k, run in enumerate(self.members)]

    def log(self, epoch: int, model: nn.Module | None = None, *, stage: str = "train", **metrics) -> None:
        """Each member's row: a tensor of K values gives each its own (the loss), others are shared.
        A member whose metric, or whose weights or buffers, are NaN or infinite is marked failed
        and logs no more; when every member has failed the group stops (:class:`bench.train.Diverged`)."""
        blown = model is not None and nonfinite_tensor(model.state_dict()) is not None  # then: whose?
        reports = self.evaluate(model) if model is not None else [None] * self.runs
        for k, run in enumerate(self.members):
            if k in self.failed:
                continue
            values = {name: _member_value(value, k, self.runs) for name, value in metrics.items()}
            try:
                check_finite(epoch, stage, **values)
                if blown:
                    check_finite_model(epoch, stage, self.unfused(model, k))
            except Diverged as exc:
                self.failed[k] = str(exc)
                continue
            run.log_row(epoch, stage, values, reports[k])
        if len(self.failed) == self.runs:
            raise BenchError(self.failed[0])

    def unfused(self, model: nn.Module, k: int) -> nn.Module:
        """Member k's trained network on its own (its weights and running statistics), in the
        architecture :meth:`model` built for each run."""
        if isinstance(model, PerRun):  # trained alone (Run.alone)
            return model[k]
        alone = copy.deepcopy(self._architecture)
        alone.load_state_dict(run_state(model, k))
        return alone


class _Alone:
    """Member k of a fused group as the run trained alone, for a stage ``FusedRun.alone`` trains
    it through: the member's own ``Run`` (data, loaders, generator, history, records, test set),
    except that its networks are drawn from its stream of the group's RNG streams, its steps are
    listed with the group's, and its epochs are checkpointed in the group's checkpoint (stage
    ``"<stage> #k"``, with the members' histories and failures and its generator), so a killed
    group resumes there."""

    def __init__(self, fused: FusedRun, k: int):
        self._fused, self._k, self._run = fused, k, fused.members[k]

    def __getattr__(self, name: str):
        return getattr(self._run, name)

    def model(self, num_classes: int | None = None, *, adapt=None) -> nn.Module:
        return self._fused._drawn(self._k, lambda: self._run.model(num_classes, adapt=adapt))

    def net(self, make) -> nn.Module:
        return self._fused._drawn(self._k, lambda: self._run.net(make))

    def step_graph(self, fn, **kwargs):
        return self._fused.lead.step_graph(fn, **kwargs)

    def step_forward(self, model: nn.Module, loader):
        return self._fused.lead.step_forward(model, loader)

    def step_forwards(self, models, loader):
        return self._fused.lead.step_forwards(models, loader)

    def reseeded(self, seed_of):
        raise NotImplementedError("a stage trained alone in a fused group cannot reseed its run")

    def epochs(self, count: int, *, stage: str = "train", state: dict | None = None):
        state = {**(state or {}), "fused_histories": _Histories(self._fused),
                 "member_generator": _Generators([self._run.generator])}
        return self._fused.lead.epochs(count, stage=f"{stage} #{self._k}", state=state)


def _member_value(value, k: int, runs: int):
    """Member k's value of a metric: its entry of a tensor of K values, else the shared value (a
    tensor as its Python number: an integer count stays an int)."""
    if isinstance(value, torch.Tensor):
        return value.reshape(-1)[k].item() if value.numel() == runs and runs > 1 else value.item()
    return float(value) if isinstance(value, np.floating) else value


def execute_fused(group: FusedGroup, *, device: torch.device, data_dir: str | None = None, cache_dir=None,
                  progress=None, checkpoint_every_s: float = 60.0, options=None) -> list:
    """Train the group's runs as one fused network; one ``RunResult`` per run, in order.
    ``options``: a :class:`bench.execute.RunOptions` (default ``RunOptions()``).

    Runs whose pools or meta sets differ in size train one at a time instead."""
    from bench.capture import run_kernels
    from bench.execute import RunOptions

    options = options or RunOptions()
    with run_kernels(device, deterministic=options.deterministic):  # and cuDNN's search (bench/capture.py)
        return _execute_fused(group, device=device, data_dir=data_dir, cache_dir=cache_dir, progress=progress,
                              checkpoint_every_s=checkpoint_every_s, options=options)


def _execute_fused(group: FusedGroup, *, device, data_dir, cache_dir, progress, checkpoint_every_s, options) -> list:
    from bench.execute import (
        RunResult,
        checkpoint_path,
        done_result,
        environment,
        execute,
        load_data,
        method_for,
        out_of_memory,
        out_of_memory_error,
        steps_env,
        summarize,
    )
    from methods.base import Run

    specs = group.specs
    datas = [load_data(spec, data_dir) for spec in specs]
    method_cls = method_for(specs[0])
    params = method_cls.params_from_spec(specs[0])
    if len({(len(d.train_y), len(d.y_meta), *method_cls.fused_sizes(params, d)) for d in datas}) != 1:
        _say(progress, specs[0], "training pools or meta sets (clean or pseudo) of different sizes: its group trains "
                                 "one run at a time")
        return [execute(spec, progress=_member_progress(progress, spec), device=device, data_dir=data_dir,
                        cache_dir=cache_dir, checkpoint_every_s=checkpoint_every_s, options=options)
                for spec in specs]
    env = environment(device)
    # the first run holds the group's checkpoint (read here, if a killed attempt left one)
    group_checkpoint = {"checkpoint_path": checkpoint_path(group, cache_dir), "checkpoint_key": group.key(),
                        "checkpoint_every_s": checkpoint_every_s}
    runs = [Run(spec=spec, data=data, device=device, params=params, cache_dir=cache_dir, graph=options.graph,
                compile_steps=options.compile,
                progress=_member_progress(progress, spec), **(group_checkpoint if k == 0 else {}))
            for k, (spec, data) in enumerate(zip(specs, datas))]
    lead = runs[0]
    note_members(group, lead.checkpoint_path)
    fused = FusedRun(runs, "runs" if lead.channels_last else "rows")
    if lead.checkpoint_found:
        _say(progress, specs[0], f"resuming its fused group from the checkpoint ({lead.checkpoint_position()})")
    metrics: dict[int, dict] = {}
    error, keep = None, False
    try:
        model = method_cls(params).fit(fused)
        for k, run in enumerate(runs):
            if k not in fused.failed:
                metrics[k] = summarize(run, fused.unfused(model, k))
    except BenchError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a bug in a method must not stop the grid; keep the reason
        if out_of_memory(exc):  # the group's checkpoint is kept for --retry-failed
            error, keep = out_of_memory_error(exc), True
        else:
            print(traceback.format_exc(limit=6), file=sys.stderr)
            error = f"{type(exc).__name__}: {exc}"
    finally:
        env.update(steps_env(fused, device), fused=len(runs))
    return [done_result(run, metrics[k], dict(env)) if k in metrics else
            RunResult(run.spec, "failed", history=run.history, env=dict(env), error=fused.failed.get(k, error),
                      keep_checkpoint=keep and k not in fused.failed)
            for k, run in enumerate(runs)]


def note_members(group: FusedGroup, path) -> None:
    """Write beside the group's checkpoint which runs it holds, one key per line (see
    :func:`sweep_group_checkpoints`), atomically: a kill while writing must not leave a torn list,
    whose group checkpoint would never be swept."""
    from bench.execute import MEMBERS_SUFFIX

    if path is None:
        return
    listing = path.with_suffix(MEMBERS_SUFFIX)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}-members")  # swept with the checkpoint's temp files
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text("".join(f"{s.key()}\n" for s in group.specs))
        os.replace(tmp, listing)
    except OSError:
        tmp.unlink(missing_ok=True)  # the checkpoint itself says it cannot be written, once


def group_listings(cache_dir):
    """The fused groups that left a checkpoint under ``cache_dir``: (their checkpoint's path, the
    keys of their runs), from the list :func:`note_members` writes beside it (unreadable ones
    skipped)."""
    from bench.execute import MEMBERS_SUFFIX

    folder = None if cache_dir is None else Path(cache_dir) / "checkpoints"
    for listing in sorted(folder.glob(f"*{MEMBERS_SUFFIX}")) if folder is not None and folder.is_dir() else []:
        try:
            keys = listing.read_text().split()
        except OSError:
            continue
        yield listing.with_suffix(".pt"), keys


def sweep_group_checkpoints(store, cache_dir) -> None:
    """Remove the checkpoints of groups whose runs are all done: left by a kill between the
    commit of a group's results and the removal of its checkpoint (a later ``bench run`` forms no
    group for runs already done, so nothing else would remove them)."""
    from bench.execute import remove_checkpoint

    for path, keys in list(group_listings(cache_dir)):
        if keys and all(store.status(key) == "done" for key in keys):
            remove_checkpoint(path)


def unused_group_checkpoints(items: list, cache_dir) -> str | None:
    """A note where runs about to train from scratch are held by the checkpoint of a fused group
    that ``items`` (what the grid will train: specs and groups) does not form again (another
    --fuse, or none): that group's --fuse resumes them instead."""
    formed = {item.key() for item in items}
    pending = {spec.key() for item in items for spec in members(item)}
    held = [len(keys) for path, keys in group_listings(cache_dir)
            if path.stem not in formed and path.exists() and pending & set(keys)]
    if not held:
        return None
    sizes = ", ".join(f"--fuse {k}" for k in sorted(set(held)))
    whose = ("the checkpoint of a fused group holds" if len(held) == 1 else
             f"{len(held)} checkpoints of fused groups hold")
    return (f"{whose} some of these runs, which this command does not fuse so: they train from scratch; the "
            f"same command with {sizes} resumes them")


def _member_progress(progress, spec: RunSpec):
    """The group's progress channel, each row tagged with the run it is about."""
    if progress is None:
        return None
    key = spec.key()
    return lambda row: progress({**row, "key": key})


def _say(progress, spec: RunSpec, note: str) -> None:
    if progress is not None:
        progress({"note": note, "key": spec.key()})
    else:
        print(f"[{spec.key()}] {note}", file=sys.stderr)
