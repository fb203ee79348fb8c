//! Where a packed batch stands between the handler and the host: the record the host last
//! started (with `advance`), how many records its step may take, and whether the host ended the
//! batch. `handle_packed` asks the host to move on only when a step is used up or a record
//! used an import, and the import wrappers (`producer_api::call`, `log`, `publish_event`)
//! start a record's own step before its first import call, as the contract requires.

use crate::bindings::kafka_wasm::handler::batch::advance;
use std::cell::Cell;

#[derive(Clone, Copy)]
struct Step {
    /// A batch is being handled.
    active: bool,
    /// The record the host last started (its step's first record).
    host_index: u32,
    /// The record being handled.
    current: u32,
    /// One past the last record the host's step allows.
    end: u32,
    /// A record since `host_index` used an import: the next record needs an `advance`.
    used_import: bool,
    /// The host ended the batch before `current`: its result does not count.
    abandoned: bool,
}

impl Step {
    /// Asks the host to start a step at record `index`; `false` when it ended the batch instead.
    fn advance(&mut self, index: u32) -> bool {
        let stride = advance(index);
        if stride == 0 {
            return false;
        }
        self.host_index = index;
        self.end = index.saturating_add(stride);
        self.used_import = false;
        true
    }
}

const IDLE: Step = Step { active: false, host_index: 0, current: 0, end: 1, used_import: false, abandoned: false };

thread_local! {
    static STEP: Cell<Step> = const { Cell::new(IDLE) };
}

fn update<R>(f: impl FnOnce(&mut Step) -> R) -> R {
    STEP.with(|cell| {
        let mut step = cell.get();
        let out = f(&mut step);
        cell.set(step);
        out
    })
}

/// A batch in progress; the import wrappers go straight to the host again once it is dropped.
pub(crate) struct Batch(());

impl Batch {
    /// Starts a batch: its first step is record 0 alone.
    pub(crate) fn begin() -> Self {
        STEP.with(|cell| cell.set(Step { active: true, ..IDLE }));
        Self(())
    }

    /// Moves on to record `index`, asking the host first when the step is used up or a record
    /// used an import; `false` when the host ended the batch before it.
    pub(crate) fn start(&self, index: u32) -> bool {
        update(|step| {
            if index > 0 && (index >= step.end || step.used_import) && !step.advance(index) {
                return false;
            }
            step.current = index;
            true
        })
    }

    /// Whether the host ended the batch before the current record, while that record was being
    /// handled (at its first import call): its result must be left out.
    pub(crate) fn abandoned(&self) -> bool {
        STEP.with(|cell| cell.get().abandoned)
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        STEP.with(|cell| cell.set(IDLE));
    }
}

/// Before an import call: in a batch, starts the current record's own step if the host's step
/// began at an earlier record. `false` when the host ended the batch instead: the import must
/// not be called, and the record's result will be left out.
pub(crate) fn before_import() -> bool {
    update(|step| {
        if !step.active {
            return true;
        }
        if step.abandoned {
            return false;
        }
        if step.current != step.host_index && !step.advance(step.current) {
            step.abandoned = true;
            return false;
        }
        step.used_import = true;
        true
    })
}
