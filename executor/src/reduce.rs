//! The collective callback the math modules (Sinkhorn, LARC, prototype
//! normalisation) take instead of a process group, so they stay independent
//! of `dist.rs` and can be tested with simulated ranks.

use tch::Tensor;

/// Why a collective failed (the engine's error, flattened to text).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("collective failed: {0}")]
pub struct ReduceError(pub String);

/// Sums `t` in place across all ranks (a no-op for world size 1).
pub type AllReduceSum<'a> = dyn Fn(&mut Tensor) -> Result<(), ReduceError> + 'a;

/// The world-size-1 all-reduce: the local sum is already the global one.
pub fn local_sum(_t: &mut Tensor) -> Result<(), ReduceError> {
    Ok(())
}

/// In-process "ranks" on threads that all-reduce through shared memory: the
/// math modules' distributed behaviour tested without c10d. Every rank sums
/// the contributions in rank order, so all ranks get bit-identical results.
pub struct ThreadWorld {
    size: usize,
    slots: std::sync::Mutex<Vec<Option<Tensor>>>,
    barrier: std::sync::Barrier,
}

impl ThreadWorld {
    pub fn new(size: usize) -> ThreadWorld {
        let size = size.max(1);
        ThreadWorld { size, slots: std::sync::Mutex::new((0..size).map(|_| None).collect()), barrier: std::sync::Barrier::new(size) }
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Rank `rank`'s all-reduce-sum; every rank must call it the same
    /// number of times with tensors of one shape.
    pub fn all_reduce_sum(&self, rank: usize, t: &mut Tensor) -> Result<(), ReduceError> {
        let mine = t.f_detach_copy().map_err(|e| ReduceError(e.to_string()))?;
        self.slots.lock().map_err(|_| ReduceError("poisoned".into()))?[rank] = Some(mine);
        self.barrier.wait();
        let sum = {
            let slots = self.slots.lock().map_err(|_| ReduceError("poisoned".into()))?;
            let mut acc: Option<Tensor> = None;
            for s in slots.iter() {
                let s = s.as_ref().ok_or_else(|| ReduceError("a rank did not contribute".into()))?;
                acc = Some(
                    match acc {
                        None => s.f_detach_copy(),
                        Some(a) => a.f_add(s),
                    }
                    .map_err(|e| ReduceError(e.to_string()))?,
                );
            }
            acc
        };
        self.barrier.wait();
        if let Some(sum) = sum {
            t.f_copy_(&sum).map_err(|e| ReduceError(e.to_string()))?;
        }
        Ok(())
    }

    /// Runs `f(rank, input, all_reduce)` on one thread per input (rank
    /// order) and returns the results in rank order. Inputs are moved in
    /// because tensors may be sent between threads but not shared.
    pub fn run<I: Send, T: Send>(inputs: Vec<I>, f: impl Fn(usize, I, &AllReduceSum) -> T + Sync) -> Vec<T> {
        let world = ThreadWorld::new(inputs.len());
        std::thread::scope(|s| {
            let handles: Vec<_> = inputs
                .into_iter()
                .enumerate()
                .map(|(r, input)| {
                    let (w, f) = (&world, &f);
                    s.spawn(move || f(r, input, &|t: &mut Tensor| w.all_reduce_sum(r, t)))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))).collect()
        })
    }
}
