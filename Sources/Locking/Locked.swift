import Glibc

/// A value behind a pthread mutex, reached only while it is held; a
/// thread can wait for the value to reach a state another thread puts it in.
///
/// The standard library's `Synchronization.Mutex` does the same job, but on
/// Linux its lock lives in code ThreadSanitizer does not see, so every use
/// reads as a data race under `--sanitize=thread` and drowns the real ones.
/// pthread mutexes are intercepted by the sanitizers; umdev's locks are
/// off the hot path (management, the display socket's viewer set, REQ), so
/// the difference in cost does not matter.
public final class Locked<Value>: @unchecked Sendable {
    // @unchecked: `value` is touched only between lock and unlock of `mutex`.
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    /// Broadcast after every change, for `wait`; timed on CLOCK_MONOTONIC.
    private let changed: UnsafeMutablePointer<pthread_cond_t>
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
        changed = .allocate(capacity: 1)
        changed.initialize(to: pthread_cond_t())
        var attributes = pthread_condattr_t()
        pthread_condattr_init(&attributes)
        pthread_condattr_setclock(&attributes, CLOCK_MONOTONIC)
        pthread_cond_init(changed, &attributes)
        pthread_condattr_destroy(&attributes)
    }

    deinit {
        pthread_cond_destroy(changed)
        changed.deinitialize(count: 1)
        changed.deallocate()
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held, then wakes any `wait`.
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer {
            pthread_cond_broadcast(changed)
            pthread_mutex_unlock(mutex)
        }
        return try body(&value)
    }

    /// Waits until `ready(value)` holds or `timeout` seconds pass (a
    /// negative or NaN timeout looks once; at most a day is waited);
    /// returns whether it holds. Woken by every `withLock`, so no polling.
    /// Not to be called with the lock held (from `withLock` or `ready`).
    public func wait(timeout: Double, until ready: (Value) -> Bool) -> Bool {
        let limit = timeout.isNaN ? 0 : min(max(timeout, 0), 86_400)
        let whole = limit.rounded(.down)
        var deadline = timespec()
        clock_gettime(CLOCK_MONOTONIC, &deadline)
        let ns = Int(deadline.tv_nsec) + Int((limit - whole) * 1e9)
        deadline.tv_sec += Int(whole) + ns / 1_000_000_000
        deadline.tv_nsec = ns % 1_000_000_000
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        while !ready(value) {
            if pthread_cond_timedwait(changed, mutex, &deadline) == ETIMEDOUT { return ready(value) }
        }
        return true
    }
}
