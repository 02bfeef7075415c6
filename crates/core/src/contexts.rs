//! The contexts of a process and what each was charged, kept so that no lock is held while
//! the driver makes or ends a context.
//!
//! Three things must hold, and once held because one lock was kept across every context
//! call; they are states here instead, changed in short steps under a lock that is never
//! held across a driver or NVML call:
//! - Two threads retaining one primary context at once charge it once. The first retain of
//!   a device makes the context ([`PrimaryRetain::Make`]); retains that come meanwhile wait
//!   until it is live (or was not made), then count theirs.
//! - A context is charged this process's memory on its GPU measured around its making, so
//!   no two contexts are made on one GPU at once, nor one made while another ends there:
//!   each would measure the other. The GPU is marked as changing for the while; a making or
//!   an ending on a marked GPU waits.
//! - A release that may end a primary context must not race a retain (its charge dropped
//!   while the driver still holds the context, or a retain counted on a context the driver
//!   then ends and makes again unmeasured). Such a release goes alone: it waits until no
//!   retain or release of the device is in the driver, and retains wait for it.
//!
//! Retains of a live context and releases that cannot end it go at once. A retain is
//! counted as in flight before the driver call and becomes a reference once the driver
//! succeeded (it is undone if the driver failed); a release is counted as in flight and
//! takes its reference once the driver succeeded. A release cannot end the context while
//! the references that no release in flight takes are two or more: the driver's count is
//! never below the references less the releases in flight. The release that takes the last
//! reference, after the driver succeeded, ends the charge; a reset ends it whatever the
//! count.
//!
//! A reset ends the context but not its references: "resetting the primary context does
//! not release it", the driver's documentation says, and each holder still releases its
//! retain. So the book keeps them ([`Primary::Reset`]): their releases take them without
//! ending anything, and the next retain makes the context anew (measured and charged) on
//! top of them, so that the last release, not the first, ends it. Forgetting them let a
//! holder's release after such a retain give back the new context's charge while the
//! context stayed live: a context the tenant's quota never paid for.
//!
//! A context that ends takes its memory with it: the driver frees what was allocated in it
//! (`crate::allocations` says which allocations those are). So the book knows each
//! context's handle, the primary context's too (recorded at its making), and hands the
//! ended context over ([`EndedContext`]) while the calls waiting on its device and GPU
//! still wait: its allocations are taken out before a context can be made anew there
//! under the same handle (kept, they stayed charged until the process exited, and a
//! program that called `cudaDeviceReset` lost that much of its quota).
//!
//! Each call begins with a step that returns a token ([`MakingPrimary`], [`Retaining`],
//! [`Releasing`], [`Creating`], [`Destroying`]) and ends when the token is told the driver's answer;
//! a token dropped without an answer means the driver call failed (or never ran), so that
//! an early return never leaves a device waited on forever. No CUDA here: devices are CUDA
//! ordinals, contexts their handles as numbers.

use std::collections::{HashMap, HashSet};

use gpuslice_ledger::GpuIndex;
use parking_lot::{Condvar, Mutex};

use crate::allocations::ContextHandle;
use crate::policy::memory::Charge;

/// The contexts of this process: primary contexts by device ordinal, created ones by
/// handle, and what each was charged.
#[derive(Debug, Default)]
pub struct ContextBook {
    book: Mutex<Book>,
    /// Notified whenever a call in flight ends, so that waiting calls decide again.
    settled: Condvar,
}

/// A context the driver ended: its own charge, and its handle, under which its allocations
/// were recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndedContext {
    /// The context's handle.
    pub handle: ContextHandle,
    /// What the context itself was charged.
    pub charge: Charge,
}

/// What a retain of a primary context does next.
#[derive(Debug)]
pub enum PrimaryRetain<'a> {
    /// The device has no primary context: this retain makes it (the driver's retain,
    /// measured), charges it, then [`MakingPrimary::made`]. Other calls on the GPU wait
    /// meanwhile.
    Make(MakingPrimary<'a>),
    /// The context is live: this retain is counted in flight; [`Retaining::succeeded`] once
    /// the driver succeeded.
    Count(Retaining<'a>),
}

/// The book's contents, changed only in the short steps below.
#[derive(Debug, Default)]
struct Book {
    primary: HashMap<i32, Primary>,
    /// Contexts made by `cuCtxCreate*`, by handle.
    created: HashMap<usize, Charge>,
    /// GPUs where a context is being made (its footprint measured) or ended now.
    changing: HashSet<GpuIndex>,
    /// Calls waiting for another to end.
    waiting: usize,
}

/// A device's primary context.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Primary {
    /// Its first retain is in the driver (and its footprint being measured, then charged);
    /// `kept` references a reset left are counted beside it.
    Making { kept: u32 },
    /// Made and charged.
    Live(Live),
    /// A release that may end it, or a reset, is in the driver: it holds `references`.
    Ending {
        context: EndedContext,
        references: u32,
    },
    /// Ended by a reset, which kept the driver's count: `references` retains are still to
    /// be released, `releasing` of them in the driver now. Nothing is charged; the next
    /// retain makes the context anew.
    Reset { references: u32, releasing: u32 },
}

/// A live primary context's count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Live {
    charge: Charge,
    /// The context's handle, as its making retain returned it.
    handle: ContextHandle,
    /// Retains the driver confirmed, less releases it confirmed: at least one.
    references: u32,
    /// Retains in the driver now.
    retaining: u32,
    /// Releases in the driver now, none of which can end the context: `references` is at
    /// least `releasing + 1`.
    releasing: u32,
}

/// A step's answer: go on (with what the token needs), or wait for a call in flight.
#[derive(Debug, PartialEq, Eq)]
enum Step<T> {
    Go(T),
    Wait,
}

/// How a release goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    /// It leaves references: counted in flight.
    Leaving,
    /// It may end the context: alone, with the GPU marked as changing.
    Last(GpuIndex),
    /// A reset: alone, with the GPU marked as changing; it ends the context but keeps its
    /// references.
    Reset(GpuIndex),
    /// A release of a context a reset ended: it takes one of the references the reset
    /// kept, and ends nothing.
    AfterReset,
}

impl Book {
    /// `Go(Some(kept))`: this retain makes the context, beside `kept` references a reset
    /// left; `Go(None)`: it counts on the live context.
    fn begin_retain(&mut self, device: i32, gpu: GpuIndex) -> Step<Option<u32>> {
        let kept = match self.primary.get_mut(&device) {
            None => 0,
            Some(Primary::Live(live)) => {
                live.retaining += 1;
                return Step::Go(None);
            }
            Some(&mut Primary::Reset {
                references,
                releasing: 0,
            }) => references,
            Some(Primary::Making { .. } | Primary::Ending { .. } | Primary::Reset { .. }) => {
                return Step::Wait;
            }
        };
        if !self.changing.insert(gpu) {
            return Step::Wait;
        }
        self.primary.insert(device, Primary::Making { kept });
        Step::Go(Some(kept))
    }

    fn end_retain(&mut self, device: i32, succeeded: bool) {
        if let Some(Primary::Live(live)) = self.primary.get_mut(&device) {
            live.retaining = live.retaining.saturating_sub(1);
            if succeeded {
                live.references += 1;
            }
        }
    }

    fn end_making_primary(
        &mut self,
        device: i32,
        gpu: GpuIndex,
        made: Option<(ContextHandle, Charge)>,
    ) {
        self.changing.remove(&gpu);
        let kept = match self.primary.get(&device) {
            Some(&Primary::Making { kept }) => kept,
            _ => 0,
        };
        match made {
            Some((handle, charge)) => {
                let live = Live {
                    charge,
                    handle,
                    references: kept + 1,
                    retaining: 0,
                    releasing: 0,
                };
                self.primary.insert(device, Primary::Live(live));
            }
            None if kept > 0 => {
                let reset = Primary::Reset {
                    references: kept,
                    releasing: 0,
                };
                self.primary.insert(device, reset);
            }
            None => {
                self.primary.remove(&device);
            }
        }
    }

    /// `Go(None)`: the book has no such context; the release is the driver's alone.
    fn begin_release(&mut self, device: i32, reset: bool) -> Step<Option<Ending>> {
        let live = match self.primary.get_mut(&device) {
            None => return Step::Go(None),
            Some(Primary::Live(live)) => live,
            // Nothing live to reset.
            Some(Primary::Reset { .. }) if reset => return Step::Go(None),
            Some(Primary::Reset { releasing, .. }) => {
                *releasing += 1;
                return Step::Go(Some(Ending::AfterReset));
            }
            Some(Primary::Making { .. } | Primary::Ending { .. }) => return Step::Wait,
        };
        if !reset && live.references >= live.releasing + 2 {
            live.releasing += 1;
            return Step::Go(Some(Ending::Leaving));
        }
        let gpu = live.charge.gpu;
        if live.retaining > 0 || live.releasing > 0 || self.changing.contains(&gpu) {
            return Step::Wait;
        }
        let ending = Primary::Ending {
            context: EndedContext {
                handle: live.handle,
                charge: live.charge,
            },
            references: live.references,
        };
        self.primary.insert(device, ending);
        self.changing.insert(gpu);
        Step::Go(Some(if reset {
            Ending::Reset(gpu)
        } else {
            Ending::Last(gpu)
        }))
    }

    /// The context to give back, if this release ended it.
    fn end_release(
        &mut self,
        device: i32,
        ending: Ending,
        succeeded: bool,
    ) -> Option<EndedContext> {
        match ending {
            Ending::Leaving => {
                if let Some(Primary::Live(live)) = self.primary.get_mut(&device) {
                    live.releasing = live.releasing.saturating_sub(1);
                    if succeeded {
                        live.references = live.references.saturating_sub(1);
                    }
                }
                None
            }
            Ending::AfterReset => {
                if let Some(Primary::Reset {
                    references,
                    releasing,
                }) = self.primary.get_mut(&device)
                {
                    *releasing = releasing.saturating_sub(1);
                    if succeeded {
                        *references = references.saturating_sub(1);
                    }
                    if *references == 0 && *releasing == 0 {
                        self.primary.remove(&device);
                    }
                }
                None
            }
            Ending::Last(gpu) | Ending::Reset(gpu) => {
                self.changing.remove(&gpu);
                let Some(&Primary::Ending {
                    context,
                    references,
                }) = self.primary.get(&device)
                else {
                    return None;
                };
                if succeeded {
                    if matches!(ending, Ending::Reset(_)) {
                        let reset = Primary::Reset {
                            references,
                            releasing: 0,
                        };
                        self.primary.insert(device, reset);
                    } else {
                        self.primary.remove(&device);
                    }
                    return Some(context);
                }
                let live = Live {
                    charge: context.charge,
                    handle: context.handle,
                    references,
                    retaining: 0,
                    releasing: 0,
                };
                self.primary.insert(device, Primary::Live(live));
                None
            }
        }
    }

    fn begin_making(&mut self, gpu: GpuIndex) -> Step<()> {
        if self.changing.insert(gpu) {
            Step::Go(())
        } else {
            Step::Wait
        }
    }

    /// A stale context under the same handle (one ended behind the book's back whose
    /// handle the driver gave out again), to give back.
    fn end_making(&mut self, gpu: GpuIndex, made: Option<(usize, Charge)>) -> Option<EndedContext> {
        self.changing.remove(&gpu);
        let (handle, charge) = made?;
        let stale = self.created.insert(handle, charge)?;
        Some(EndedContext {
            handle: ContextHandle(handle),
            charge: stale,
        })
    }

    /// `Go(None)`: the book has no such context.
    fn begin_destroy(&mut self, handle: usize) -> Step<Option<Charge>> {
        let Some(&charge) = self.created.get(&handle) else {
            return Step::Go(None);
        };
        if !self.changing.insert(charge.gpu) {
            return Step::Wait;
        }
        self.created.remove(&handle);
        Step::Go(Some(charge))
    }

    fn end_destroy(&mut self, handle: usize, charge: Charge, succeeded: bool) {
        self.changing.remove(&charge.gpu);
        if !succeeded {
            self.created.insert(handle, charge);
        }
    }
}

impl ContextBook {
    /// No contexts yet.
    pub fn new() -> ContextBook {
        ContextBook::default()
    }

    /// Runs `step` under the lock until it goes, waiting between tries for a call in flight
    /// to end.
    fn when<T>(&self, mut step: impl FnMut(&mut Book) -> Step<T>) -> T {
        let mut book = self.book.lock();
        loop {
            match step(&mut book) {
                Step::Go(value) => return value,
                Step::Wait => {
                    book.waiting += 1;
                    self.settled.wait(&mut book);
                    book.waiting -= 1;
                }
            }
        }
    }

    /// Ends a call in flight and wakes the calls waiting for one.
    fn end<T>(&self, change: impl FnOnce(&mut Book) -> T) -> T {
        let result = change(&mut self.book.lock());
        self.settled.notify_all();
        result
    }

    /// `cuDevicePrimaryCtxRetain` of `device`, whose GPU is `gpu`: make the context or count
    /// the retain (waiting while the device's context is being made or ended, and, to make
    /// it, while another context is made or ended on the GPU).
    pub fn retain_primary(&self, device: i32, gpu: GpuIndex) -> PrimaryRetain<'_> {
        match self.when(|book| book.begin_retain(device, gpu)) {
            Some(kept) => PrimaryRetain::Make(MakingPrimary {
                book: self,
                device,
                gpu,
                kept,
                ended: false,
            }),
            None => PrimaryRetain::Count(Retaining {
                book: self,
                device,
                ended: false,
            }),
        }
    }

    /// `cuDevicePrimaryCtxRelease` (`reset` false) or `cuDevicePrimaryCtxReset` (true) of
    /// `device`; `None` if the book has no primary context there (the call is the driver's
    /// alone). Waits while the context is being made or ended, and a release that may end
    /// it (or a reset) also while retains or releases of it are in the driver or another
    /// context is made or ended on its GPU.
    pub fn release_primary(&self, device: i32, reset: bool) -> Option<Releasing<'_>> {
        let ending = self.when(|book| book.begin_release(device, reset))?;
        Some(Releasing {
            book: self,
            device,
            ending,
            driver_succeeded: false,
        })
    }

    /// `cuCtxCreate*` on `gpu`: waits while another context is made or ended there.
    pub fn create(&self, gpu: GpuIndex) -> Creating<'_> {
        self.when(|book| book.begin_making(gpu));
        Creating {
            book: self,
            gpu,
            ended: false,
        }
    }

    /// `cuCtxDestroy*` of `handle`; `None` if the book has no such context (the call is the
    /// driver's alone). Waits while another context is made or ended on its GPU.
    pub fn destroy(&self, handle: usize) -> Option<Destroying<'_>> {
        let charge = self.when(|book| book.begin_destroy(handle))?;
        Some(Destroying {
            book: self,
            handle,
            charge,
            driver_succeeded: false,
        })
    }

    /// The primary context of `device`, being ended.
    fn ending_context(&self, device: i32) -> Option<EndedContext> {
        match self.book.lock().primary.get(&device) {
            Some(Primary::Ending { context, .. }) => Some(*context),
            _ => None,
        }
    }

    /// What the primary context of `device` is charged, if it is live.
    #[cfg(test)]
    fn primary_charge(&self, device: i32) -> Option<Charge> {
        match self.book.lock().primary.get(&device) {
            Some(Primary::Live(live)) => Some(live.charge),
            _ => None,
        }
    }

    /// How many calls wait for another to end (a test waits for a call to wait).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.book.lock().waiting
    }
}

/// A device's primary context being made; its GPU is marked as changing until this ends.
/// Dropped without [`made`](MakingPrimary::made), the context was not made (the driver
/// failed, or the caller undid the retain because its charge did not fit).
#[derive(Debug)]
pub struct MakingPrimary<'a> {
    book: &'a ContextBook,
    device: i32,
    gpu: GpuIndex,
    kept: u32,
    ended: bool,
}

impl MakingPrimary<'_> {
    /// Whether references a reset kept are counted beside this retain: then releasing this
    /// retain does not end the context it made (the driver's count stays above zero), and
    /// undoing its making takes a reset too, which keeps them.
    pub fn after_reset(&self) -> bool {
        self.kept > 0
    }

    /// The context `handle` was made and charged `charge`: live, with one reference.
    pub fn made(mut self, handle: ContextHandle, charge: Charge) {
        self.ended = true;
        let (device, gpu) = (self.device, self.gpu);
        self.book
            .end(|book| book.end_making_primary(device, gpu, Some((handle, charge))));
    }
}

impl Drop for MakingPrimary<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let (device, gpu) = (self.device, self.gpu);
            self.book
                .end(|book| book.end_making_primary(device, gpu, None));
        }
    }
}

/// A context being created (`cuCtxCreate*`) on a GPU, which is marked as changing until
/// this ends. Dropped without [`made`](Creating::made), the context was not made (the
/// driver failed, or the caller destroyed it again because its charge did not fit).
#[derive(Debug)]
pub struct Creating<'a> {
    book: &'a ContextBook,
    gpu: GpuIndex,
    ended: bool,
}

impl Creating<'_> {
    /// The context `handle` was made and charged `charge`. Returns a stale context to give
    /// back (its charge and its allocations): one the book still held under the same
    /// handle, which ended without the book seeing it. Nothing was allocated in the new
    /// context yet: its handle is not the program's before this returns.
    pub fn made(mut self, handle: usize, charge: Charge) -> Option<EndedContext> {
        self.ended = true;
        let gpu = self.gpu;
        self.book
            .end(|book| book.end_making(gpu, Some((handle, charge))))
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let gpu = self.gpu;
            self.book.end(|book| book.end_making(gpu, None));
        }
    }
}

/// A retain of a live primary context, counted in flight. Dropped without
/// [`succeeded`](Retaining::succeeded), the driver failed and the count is undone.
#[derive(Debug)]
pub struct Retaining<'a> {
    book: &'a ContextBook,
    device: i32,
    ended: bool,
}

impl Retaining<'_> {
    /// The driver retained the context: one more reference.
    pub fn succeeded(mut self) {
        self.ended = true;
        let device = self.device;
        self.book.end(|book| book.end_retain(device, true));
    }
}

impl Drop for Retaining<'_> {
    fn drop(&mut self) {
        if !self.ended {
            let device = self.device;
            self.book.end(|book| book.end_retain(device, false));
        }
    }
}

/// A release (or reset) of a primary context in the driver. Dropped without
/// [`succeeded`](Releasing::succeeded), the driver failed and the context keeps its count.
#[derive(Debug)]
pub struct Releasing<'a> {
    book: &'a ContextBook,
    device: i32,
    ending: Ending,
    driver_succeeded: bool,
}

impl Releasing<'_> {
    /// The driver released (or reset) the context. If that ended it, `give_back` gets it
    /// (its charge and its handle, to give back its allocations too) while the device's
    /// other calls still wait, so that a retain making the context anew never finds the
    /// old one's charges still counted beside its own (a thread holding the new context saw
    /// it charged twice when the old charge went after the book let the retain go), and
    /// nothing allocated in the new context under the same handle is taken for the old
    /// one's. Returns whether it ended the context.
    pub fn succeeded(mut self, give_back: impl FnOnce(EndedContext)) -> bool {
        self.driver_succeeded = true;
        let context = match self.ending {
            Ending::Last(_) | Ending::Reset(_) => self.book.ending_context(self.device),
            Ending::Leaving | Ending::AfterReset => None,
        };
        context.map(give_back).is_some()
        // Dropping `self` then ends the release.
    }
}

impl Drop for Releasing<'_> {
    fn drop(&mut self) {
        let (device, ending, succeeded) = (self.device, self.ending, self.driver_succeeded);
        self.book
            .end(|book| book.end_release(device, ending, succeeded));
    }
}

/// A created context being destroyed; its GPU is marked as changing until this ends.
/// Dropped without [`succeeded`](Destroying::succeeded), the driver failed and the context
/// keeps its charge.
#[derive(Debug)]
pub struct Destroying<'a> {
    book: &'a ContextBook,
    handle: usize,
    charge: Charge,
    driver_succeeded: bool,
}

impl Destroying<'_> {
    /// The driver destroyed the context: `give_back` gets it (its charge and its handle,
    /// to give back its allocations too) while the GPU is still marked as changing, so that
    /// a context made next on it is not measured or refused beside charges that are going,
    /// and nothing allocated in one made there under the same handle is taken for this
    /// one's.
    pub fn succeeded(mut self, give_back: impl FnOnce(EndedContext)) {
        self.driver_succeeded = true;
        give_back(EndedContext {
            handle: ContextHandle(self.handle),
            charge: self.charge,
        });
        // Dropping `self` then ends the destroy.
    }
}

impl Drop for Destroying<'_> {
    fn drop(&mut self) {
        let (handle, charge, succeeded) = (self.handle, self.charge, self.driver_succeeded);
        self.book
            .end(|book| book.end_destroy(handle, charge, succeeded));
    }
}

#[cfg(test)]
mod tests;
