use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use super::*;
use crate::allocations::{Allocations, Held};

const G0: GpuIndex = GpuIndex(0);
const G1: GpuIndex = GpuIndex(1);

/// The handle of device 0's primary context.
const PRIMARY: ContextHandle = ContextHandle(0xc000);

fn charge(gpu: GpuIndex, bytes: u64) -> Charge {
    Charge { gpu, bytes }
}

/// Device 0's primary context, ended, charged `charge`.
fn primary(charge: Charge) -> EndedContext {
    EndedContext {
        handle: PRIMARY,
        charge,
    }
}

/// A book where device 0's primary context (on G0) is live with `references`.
fn live(references: u32) -> (Book, Charge) {
    let mut book = Book::default();
    let context = charge(G0, 500);
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(0)));
    book.end_making_primary(0, G0, Some((PRIMARY, context)));
    for _ in 1..references {
        assert_eq!(book.begin_retain(0, G0), Step::Go(None));
        book.end_retain(0, true);
    }
    (book, context)
}

fn references(book: &Book, device: i32) -> Option<u32> {
    match book.primary.get(&device) {
        Some(Primary::Live(live)) => Some(live.references),
        _ => None,
    }
}

#[test]
fn the_first_retain_makes_the_context_and_retains_meanwhile_wait_then_count() {
    let mut book = Book::default();
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(0)));
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Wait,
        "made once, charged once"
    );
    book.end_making_primary(0, G0, Some((PRIMARY, charge(G0, 500))));
    assert_eq!(book.begin_retain(0, G0), Step::Go(None));
    book.end_retain(0, true);
    assert_eq!(references(&book, 0), Some(2));
    assert!(book.changing.is_empty());
}

#[test]
fn a_first_retain_that_failed_leaves_nothing_behind() {
    let mut book = Book::default();
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(0)));
    book.end_making_primary(0, G0, None);
    assert!(book.primary.is_empty() && book.changing.is_empty());
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Go(Some(0)),
        "the next retain makes it"
    );
}

#[test]
fn a_failed_retain_of_a_live_context_is_undone() {
    let (mut book, _) = live(1);
    assert_eq!(book.begin_retain(0, G0), Step::Go(None));
    book.end_retain(0, false);
    assert_eq!(references(&book, 0), Some(1));
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0))),
        "nothing left in flight: the one reference's release may end it"
    );
}

#[test]
fn retains_and_releases_that_leave_references_go_at_once() {
    let (mut book, _) = live(2);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Leaving))
    );
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Go(None),
        "a retain during a release that leaves references"
    );
    assert_eq!(book.end_release(0, Ending::Leaving, true), None);
    book.end_retain(0, true);
    assert_eq!(references(&book, 0), Some(2));
}

#[test]
fn a_release_that_may_end_the_context_waits_for_the_calls_in_the_driver() {
    // Two references, two releases at once: the second may be the one that ends it.
    let (mut book, context) = live(2);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Leaving))
    );
    assert_eq!(book.begin_release(0, false), Step::Wait);
    assert_eq!(book.end_release(0, Ending::Leaving, true), None);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(
        book.end_release(0, Ending::Last(G0), true),
        Some(primary(context))
    );
    assert!(book.primary.is_empty() && book.changing.is_empty());

    // One reference and a retain in the driver: whether the release ends the context
    // depends on which reaches the driver first, so the release waits for the retain.
    let (mut book, _) = live(1);
    assert_eq!(book.begin_retain(0, G0), Step::Go(None));
    assert_eq!(book.begin_release(0, false), Step::Wait);
    book.end_retain(0, true);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Leaving))
    );
}

#[test]
fn a_failed_release_keeps_the_count() {
    let (mut book, _) = live(2);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Leaving))
    );
    assert_eq!(book.end_release(0, Ending::Leaving, false), None);
    assert_eq!(references(&book, 0), Some(2));

    let (mut book, context) = live(1);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(book.end_release(0, Ending::Last(G0), false), None);
    assert_eq!(references(&book, 0), Some(1));
    assert!(book.changing.is_empty());
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(
        book.end_release(0, Ending::Last(G0), true),
        Some(primary(context))
    );
}

#[test]
fn retains_wait_while_the_context_may_be_ending_and_then_make_it_anew() {
    let (mut book, context) = live(1);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(book.begin_retain(0, G0), Step::Wait);
    assert_eq!(book.begin_release(0, false), Step::Wait);
    assert_eq!(
        book.end_release(0, Ending::Last(G0), true),
        Some(primary(context))
    );
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Go(Some(0)),
        "the driver ended it: made again, measured and charged again"
    );

    // The release failed: the waiting retain counts on the live context.
    let (mut book, _) = live(1);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(book.begin_retain(0, G0), Step::Wait);
    assert_eq!(book.end_release(0, Ending::Last(G0), false), None);
    assert_eq!(book.begin_retain(0, G0), Step::Go(None));
}

#[test]
fn a_reset_ends_the_context_whatever_its_count_and_keeps_its_references() {
    let (mut book, context) = live(3);
    assert_eq!(
        book.begin_release(0, true),
        Step::Go(Some(Ending::Reset(G0)))
    );
    assert_eq!(
        book.end_release(0, Ending::Reset(G0), true),
        Some(primary(context))
    );
    assert!(book.changing.is_empty());
    assert_eq!(
        book.begin_release(0, true),
        Step::Go(None),
        "a reset of an ended context is the driver's alone"
    );
    // Its holders' releases take the references the reset kept, ending nothing.
    for left in [2, 1] {
        assert_eq!(
            book.begin_release(0, false),
            Step::Go(Some(Ending::AfterReset))
        );
        assert_eq!(book.end_release(0, Ending::AfterReset, true), None);
        assert_eq!(
            book.primary.get(&0),
            Some(&Primary::Reset {
                references: left,
                releasing: 0
            })
        );
    }
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::AfterReset))
    );
    assert_eq!(book.end_release(0, Ending::AfterReset, true), None);
    assert!(book.primary.is_empty(), "every reference released");
    assert_eq!(book.begin_release(0, false), Step::Go(None));
}

/// The hole this closes: a retain after a reset made the context anew and was charged, and
/// a release by one of the holders from before the reset, which the driver leaves live,
/// gave that charge back (the book had forgotten their references).
#[test]
fn a_release_after_a_reset_and_a_retain_leaves_the_new_context_charged() {
    let (mut book, _) = live(2);
    assert_eq!(
        book.begin_release(0, true),
        Step::Go(Some(Ending::Reset(G0)))
    );
    book.end_release(0, Ending::Reset(G0), true);
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Go(Some(2)),
        "made anew, beside the two references the reset kept"
    );
    let again = charge(G0, 600);
    book.end_making_primary(0, G0, Some((PRIMARY, again)));
    assert_eq!(references(&book, 0), Some(3));
    for _ in 0..2 {
        assert_eq!(
            book.begin_release(0, false),
            Step::Go(Some(Ending::Leaving)),
            "the old holders' releases leave it live"
        );
        assert_eq!(book.end_release(0, Ending::Leaving, true), None);
    }
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Last(G0)))
    );
    assert_eq!(
        book.end_release(0, Ending::Last(G0), true),
        Some(primary(again))
    );
    assert!(book.primary.is_empty());
}

#[test]
fn a_retain_after_a_reset_waits_for_releases_of_the_kept_references() {
    let (mut book, _) = live(2);
    book.begin_release(0, true);
    book.end_release(0, Ending::Reset(G0), true);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::AfterReset))
    );
    assert_eq!(book.begin_retain(0, G0), Step::Wait);
    assert_eq!(book.end_release(0, Ending::AfterReset, true), None);
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(1)));
    assert_eq!(book.begin_release(0, false), Step::Wait, "being made");
    book.end_making_primary(0, G0, None);
    assert_eq!(
        book.primary.get(&0),
        Some(&Primary::Reset {
            references: 1,
            releasing: 0
        }),
        "the making failed (or was undone): the kept reference stays"
    );
    assert!(book.changing.is_empty());
}

#[test]
fn a_reset_waits_for_the_calls_in_the_driver_and_a_failed_one_keeps_the_count() {
    let (mut book, _) = live(2);
    assert_eq!(book.begin_retain(0, G0), Step::Go(None));
    assert_eq!(book.begin_release(0, true), Step::Wait);
    book.end_retain(0, true);
    assert_eq!(
        book.begin_release(0, false),
        Step::Go(Some(Ending::Leaving))
    );
    assert_eq!(book.begin_release(0, true), Step::Wait);
    book.end_release(0, Ending::Leaving, true);
    assert_eq!(
        book.begin_release(0, true),
        Step::Go(Some(Ending::Reset(G0)))
    );
    assert_eq!(book.end_release(0, Ending::Reset(G0), false), None);
    assert_eq!(references(&book, 0), Some(2));
}

#[test]
fn a_release_of_a_context_the_book_does_not_hold_is_the_drivers_alone() {
    let mut book = Book::default();
    assert_eq!(book.begin_release(3, false), Step::Go(None));
    assert_eq!(book.begin_release(3, true), Step::Go(None));
    assert_eq!(book.begin_destroy(0x1000), Step::Go(None));
}

#[test]
fn no_context_is_made_on_a_gpu_while_another_is_measured_there() {
    let mut book = Book::default();
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(0)));
    assert_eq!(
        book.begin_making(G0),
        Step::Wait,
        "a cuCtxCreate during a measurement"
    );
    assert_eq!(
        book.begin_making(G1),
        Step::Go(()),
        "another GPU's is apart"
    );
    assert_eq!(
        book.begin_retain(1, G1),
        Step::Wait,
        "a primary context on G1 waits for the created one"
    );
    book.end_making_primary(0, G0, Some((PRIMARY, charge(G0, 500))));
    assert_eq!(book.begin_making(G0), Step::Go(()));
    assert_eq!(book.end_making(G1, Some((0x1000, charge(G1, 300)))), None);
    assert_eq!(book.begin_retain(1, G1), Step::Go(Some(0)));
    assert_eq!(
        book.begin_release(0, false),
        Step::Wait,
        "nor ended on a GPU while one is measured there"
    );
}

#[test]
fn no_context_is_ended_on_a_gpu_while_one_is_made_there() {
    let mut book = Book::default();
    assert_eq!(book.begin_making(G0), Step::Go(()));
    book.end_making(G0, Some((0x1000, charge(G0, 300))));
    assert_eq!(book.begin_retain(0, G0), Step::Go(Some(0)));
    assert_eq!(book.begin_destroy(0x1000), Step::Wait);
    book.end_making_primary(0, G0, None);
    assert_eq!(book.begin_destroy(0x1000), Step::Go(Some(charge(G0, 300))));
    assert_eq!(
        book.begin_retain(0, G0),
        Step::Wait,
        "nor made while one ends"
    );
}

#[test]
fn a_destroyed_context_gives_its_charge_back_once() {
    let mut book = Book::default();
    let context = charge(G0, 300);
    assert_eq!(book.begin_making(G0), Step::Go(()));
    book.end_making(G0, Some((0x1000, context)));
    assert_eq!(book.begin_destroy(0x1000), Step::Go(Some(context)));
    assert_eq!(
        book.begin_destroy(0x1000),
        Step::Go(None),
        "a second destroy meanwhile is the driver's alone"
    );
    book.end_destroy(0x1000, context, false);
    assert_eq!(
        book.created.get(&0x1000),
        Some(&context),
        "failed: still charged"
    );
    assert_eq!(book.begin_destroy(0x1000), Step::Go(Some(context)));
    book.end_destroy(0x1000, context, true);
    assert!(book.created.is_empty() && book.changing.is_empty());
}

#[test]
fn a_handle_made_again_gives_back_the_stale_charge() {
    let mut book = Book::default();
    assert_eq!(book.begin_making(G0), Step::Go(()));
    book.end_making(G0, Some((0x1000, charge(G0, 300))));
    assert_eq!(book.begin_making(G0), Step::Go(()));
    assert_eq!(
        book.end_making(G0, Some((0x1000, charge(G0, 310)))),
        Some(EndedContext {
            handle: ContextHandle(0x1000),
            charge: charge(G0, 300)
        })
    );
    assert_eq!(book.created.get(&0x1000), Some(&charge(G0, 310)));
}

#[test]
fn an_ended_context_is_handed_over_with_its_handle() {
    let book = ContextBook::new();
    let PrimaryRetain::Make(making) = book.retain_primary(0, G0) else {
        panic!("the first retain makes the context");
    };
    making.made(PRIMARY, charge(G0, 500));
    let mut given_back = None;
    let reset = book.release_primary(0, true).expect("live");
    assert!(reset.succeeded(|ended| given_back = Some(ended)));
    assert_eq!(
        given_back,
        Some(primary(charge(G0, 500))),
        "a reset ends it"
    );

    // Made anew by a retain beside the reference the reset kept, under another handle.
    let again = ContextHandle(0xd000);
    let PrimaryRetain::Make(making) = book.retain_primary(0, G0) else {
        panic!("a retain after a reset makes the context anew");
    };
    making.made(again, charge(G0, 510));
    let release = book.release_primary(0, false).expect("live");
    assert!(!release.succeeded(|_| panic!("one reference is left")));
    let release = book.release_primary(0, false).expect("live");
    assert!(release.succeeded(|ended| given_back = Some(ended)));
    assert_eq!(
        given_back,
        Some(EndedContext {
            handle: again,
            charge: charge(G0, 510)
        }),
        "the last release ends the context made anew, by its own handle"
    );

    assert_eq!(book.create(G0).made(0x2000, charge(G0, 300)), None);
    book.destroy(0x2000)
        .expect("created")
        .succeeded(|ended| given_back = Some(ended));
    assert_eq!(
        given_back,
        Some(EndedContext {
            handle: ContextHandle(0x2000),
            charge: charge(G0, 300)
        }),
        "a destroy ends a created context"
    );
}

#[test]
fn memory_allocated_in_a_reset_context_is_given_back_with_it_once() {
    // The red team's case, as the hooks keep it: 150 MiB allocated in the primary
    // context, a reset, a retain that makes it anew (under the same handle, as the driver
    // may), and 150 MiB again, which may get the same address.
    let book = ContextBook::new();
    let allocations = Allocations::default();
    let mut charged = 0u64;
    let PrimaryRetain::Make(making) = book.retain_primary(0, G0) else {
        panic!("the first retain makes the context");
    };
    making.made(PRIMARY, charge(G0, 64));
    let in_primary = |bytes| Held {
        charge: charge(G0, bytes),
        context: Some(PRIMARY),
    };
    assert_eq!(allocations.device.insert(1 << 20, in_primary(150)), None);
    charged += 64 + 150;
    let reset = book.release_primary(0, true).expect("live");
    assert!(reset.succeeded(|ended| {
        charged -= ended.charge.bytes;
        if let Some(freed) = allocations.context_ended(ended.handle, ended.charge.gpu) {
            charged -= freed.bytes;
        }
    }));
    assert_eq!(charged, 0, "the reset gave back the context and its memory");
    assert_eq!(
        allocations.device.remove(1 << 20),
        None,
        "a free of the old pointer after the reset gives nothing back"
    );

    let PrimaryRetain::Make(making) = book.retain_primary(0, G0) else {
        panic!("made anew");
    };
    making.made(PRIMARY, charge(G0, 64));
    assert_eq!(
        allocations.device.insert(1 << 20, in_primary(150)),
        None,
        "the reused address is charged afresh"
    );
    charged += 64 + 150;
    // The holder from before the reset releases, then the one after: that ends it.
    let release = book.release_primary(0, false).expect("live");
    assert!(!release.succeeded(|_| panic!("a reference is left")));
    let release = book.release_primary(0, false).expect("live");
    assert!(release.succeeded(|ended| {
        charged -= ended.charge.bytes;
        if let Some(freed) = allocations.context_ended(ended.handle, ended.charge.gpu) {
            charged -= freed.bytes;
        }
    }));
    assert_eq!(charged, 0);
    assert!(allocations.device.is_empty());
}

/// Waits (without sleeping) until `count` calls wait in `book`.
fn until_waiting(book: &ContextBook, count: usize) {
    while book.waiting() < count {
        std::thread::yield_now();
    }
}

#[test]
fn a_retain_waits_for_a_release_that_may_end_the_context_then_makes_it_anew() {
    let book = ContextBook::new();
    let PrimaryRetain::Make(making) = book.retain_primary(0, G0) else {
        panic!("the first retain makes the context");
    };
    making.made(PRIMARY, charge(G0, 500));
    let release = book.release_primary(0, false).expect("a live context");
    std::thread::scope(|scope| {
        let retain = scope.spawn(|| matches!(book.retain_primary(0, G0), PrimaryRetain::Make(_)));
        until_waiting(&book, 1);
        let mut given_back = None;
        assert!(release.succeeded(|ended| given_back = Some(ended.charge)));
        assert_eq!(given_back, Some(charge(G0, 500)));
        assert!(
            retain.join().expect("no panic"),
            "the context is gone: the retain makes it again"
        );
    });
    assert_eq!(book.primary_charge(0), None, "the new one was not made");
}

#[test]
fn a_dropped_token_is_a_failed_call_and_wakes_those_waiting() {
    let book = ContextBook::new();
    std::thread::scope(|scope| {
        let creating = book.create(G0);
        let waiting = scope.spawn(|| {
            let making = book.create(G0);
            making.made(0x2000, charge(G0, 300))
        });
        until_waiting(&book, 1);
        drop(creating);
        assert_eq!(waiting.join().expect("no panic"), None);
    });
    let destroying = book.destroy(0x2000).expect("created");
    drop(destroying);
    let mut given_back = None;
    book.destroy(0x2000)
        .expect("still there after a failed destroy")
        .succeeded(|ended| given_back = Some(ended.charge));
    assert_eq!(given_back, Some(charge(G0, 300)));
}

/// A simulated driver's primary context and what the book's users see of it, for many
/// threads retaining and releasing at once, some of their calls failing.
#[derive(Default)]
struct Driver {
    /// The driver's count, and the charge the book was given for the context's making.
    context: Mutex<(u32, Option<Charge>)>,
    /// Set while a context is made (and measured) or ended on the GPU.
    changing: AtomicBool,
    /// Contexts made, each charged differently so that charges can be told apart.
    made: AtomicI64,
    /// Charges made less charges given back.
    charged: AtomicI64,
    /// Allocations made in the primary context, recorded as the hooks record them.
    allocations: Allocations,
    /// Bytes allocated in the primary context less bytes given back (by a free, or with
    /// the context).
    allocated: AtomicI64,
}

impl Driver {
    fn change(&self) {
        assert!(
            !self.changing.swap(true, Ordering::SeqCst),
            "two contexts made or ended on one GPU at once"
        );
    }

    /// The end of a making or an ending, which other threads may run into (measured
    /// around) if the book lets them.
    fn changed(&self) {
        std::thread::yield_now();
        assert!(
            self.changing.swap(false, Ordering::SeqCst),
            "two contexts made or ended on one GPU at once"
        );
    }
}

fn retain(book: &ContextBook, driver: &Driver, fail: bool) -> bool {
    match book.retain_primary(0, G0) {
        PrimaryRetain::Make(making) => {
            driver.change();
            let made = {
                let mut context = driver.context.lock();
                assert_eq!(context.0, 0, "made while the driver holds it");
                let made = (!fail).then(|| {
                    let n = driver.made.fetch_add(1, Ordering::SeqCst);
                    charge(G0, 500 + n.unsigned_abs())
                });
                if made.is_some() {
                    *context = (1, made);
                }
                made
            };
            driver.changed();
            let Some(made) = made else {
                return false;
            };
            // The ended context's charge went before this one was made: never two at once
            // (the end-to-end test saw a holder of the new context find both counted).
            assert_eq!(
                driver.charged.fetch_add(1, Ordering::SeqCst),
                0,
                "a context charged while the ended one's charge was still counted"
            );
            making.made(PRIMARY, made);
            true
        }
        PrimaryRetain::Count(retaining) => {
            // Other threads run between the book's step and the driver's call.
            std::thread::yield_now();
            {
                let mut context = driver.context.lock();
                assert!(
                    context.0 > 0,
                    "counted on a context the driver does not hold"
                );
                if fail {
                    return false;
                }
                context.0 += 1;
            }
            retaining.succeeded();
            true
        }
    }
}

fn release(book: &ContextBook, driver: &Driver, fail: bool) -> bool {
    let releasing = book
        .release_primary(0, false)
        .expect("a context this thread holds a reference of is in the book");
    std::thread::yield_now();
    let ended = {
        let mut context = driver.context.lock();
        assert!(context.0 > 0);
        if fail {
            return false;
        }
        context.0 -= 1;
        if context.0 == 0 {
            driver.change();
            context.1.take()
        } else {
            None
        }
    };
    if ended.is_some() {
        driver.changed();
    }
    let mut given_back = None;
    releasing.succeeded(|ended| {
        // Given back before any other call on the device goes on.
        driver.charged.fetch_sub(1, Ordering::SeqCst);
        assert_eq!(ended.handle, PRIMARY);
        // What the driver freed with the context goes with it.
        if let Some(freed) = driver.allocations.context_ended(ended.handle, G0) {
            driver
                .allocated
                .fetch_sub(i64::try_from(freed.bytes).expect("small"), Ordering::SeqCst);
        }
        given_back = Some(ended.charge);
    });
    assert_eq!(
        given_back, ended,
        "the context's charge goes with the release that ended it, and only then"
    );
    true
}

/// Allocates 1 KiB in the primary context (which the calling thread holds) under `key`,
/// and frees it at once if `free`.
fn allocate(driver: &Driver, key: u64, free: bool) {
    let held = Held {
        charge: charge(G0, 1024),
        context: Some(PRIMARY),
    };
    assert_eq!(driver.allocations.device.insert(key, held), None);
    driver.allocated.fetch_add(1024, Ordering::SeqCst);
    if free {
        let freed = driver
            .allocations
            .device
            .remove(key)
            .expect("not ended: held");
        driver.allocated.fetch_sub(
            i64::try_from(freed.charge.bytes).expect("small"),
            Ordering::SeqCst,
        );
    }
}

fn create_and_destroy(book: &ContextBook, driver: &Driver, handle: usize) {
    let creating = book.create(G0);
    driver.change();
    driver.changed();
    assert_eq!(creating.made(handle, charge(G0, 300)), None);
    let destroying = book.destroy(handle).expect("created");
    driver.change();
    driver.changed();
    let mut given_back = None;
    destroying.succeeded(|ended| given_back = Some(ended.charge));
    assert_eq!(given_back, Some(charge(G0, 300)));
}

/// A barrier for rounds of threads that breaks once one of them panicked (the others then
/// panic at it too), so that a failed assertion fails the test instead of leaving the
/// other threads waiting for ever.
struct Rounds {
    /// Threads arrived in this round, rounds over, broken.
    state: Mutex<(usize, u64, bool)>,
    over: parking_lot::Condvar,
    threads: usize,
}

impl Rounds {
    fn new(threads: usize) -> Rounds {
        Rounds {
            state: Mutex::new((0, 0, false)),
            over: parking_lot::Condvar::new(),
            threads,
        }
    }

    /// Waits for every thread to arrive; true for one of them.
    fn wait(&self) -> bool {
        let mut state = self.state.lock();
        assert!(!state.2, "another thread failed");
        state.0 += 1;
        if state.0 == self.threads {
            state.0 = 0;
            state.1 += 1;
            self.over.notify_all();
            return true;
        }
        let round = state.1;
        while state.1 == round {
            self.over.wait(&mut state);
            assert!(!state.2, "another thread failed");
        }
        false
    }
}

/// Breaks the rounds if its thread panics.
struct TakingPart<'a>(&'a Rounds);

impl Drop for TakingPart<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.state.lock().2 = true;
            self.0.over.notify_all();
        }
    }
}

#[test]
fn many_threads_retaining_and_releasing_charge_the_context_once_and_release_it_at_the_end() {
    const THREADS: usize = 8;
    const ROUNDS: usize = 300;
    let book = ContextBook::new();
    let driver = Driver::default();
    let round_over = Rounds::new(THREADS);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (book, driver, round_over) = (&book, &driver, &round_over);
            scope.spawn(move || {
                let _taking_part = TakingPart(round_over);
                let mut random = (thread as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                let mut next = move || {
                    random ^= random << 13;
                    random ^= random >> 7;
                    random ^= random << 17;
                    random
                };
                for round in 0..ROUNDS {
                    // Retains and releases in a random order, some failing, ending with
                    // none held; a created context made and destroyed now and then.
                    let mut held = 0u32;
                    for step in 0..1 + next() % 6 {
                        let fail = next() % 8 == 0;
                        if held > 0 && next() % 2 == 0 {
                            held -= u32::from(release(book, driver, fail));
                        } else {
                            held += u32::from(retain(book, driver, fail));
                        }
                        if held > 0 && next() % 2 == 0 {
                            // Memory allocated in the context this thread holds, freed
                            // now and then; the rest goes with the context.
                            let key = (thread as u64) << 40 | (round as u64) << 8 | step;
                            allocate(driver, key, next() % 4 == 0);
                        }
                    }
                    while held > 0 {
                        held -= u32::from(release(book, driver, next() % 8 == 0));
                    }
                    if thread == 0 && round % 10 == 0 {
                        create_and_destroy(book, driver, 0x1_0000 + round);
                    }
                    if round_over.wait() {
                        assert_eq!(*driver.context.lock(), (0, None));
                        assert_eq!(book.primary_charge(0), None, "no reference left");
                        assert_eq!(driver.charged.load(Ordering::SeqCst), 0);
                        assert_eq!(
                            driver.allocated.load(Ordering::SeqCst),
                            0,
                            "what was allocated in the ended context was given back, once"
                        );
                        assert!(driver.allocations.device.is_empty());
                    }
                    round_over.wait();
                }
            });
        }
    });
    let made = driver.made.load(Ordering::SeqCst);
    assert!(
        made >= ROUNDS as i64,
        "made again in every round ({made} in {ROUNDS} rounds)"
    );
    assert_eq!(book.waiting(), 0);
}
