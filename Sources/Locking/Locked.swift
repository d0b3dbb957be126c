import Glibc

/// A value behind a pthread mutex, reached only while it is held.
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
    private var value: Value

    public init(_ value: Value) {
        self.value = value
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        pthread_mutex_init(mutex, nil)
    }

    deinit {
        pthread_mutex_destroy(mutex)
        mutex.deinitialize(count: 1)
        mutex.deallocate()
    }

    /// Runs `body` with the value, the lock held.
    public func withLock<Result, Failure: Error>(_ body: (inout Value) throws(Failure) -> Result) throws(Failure) -> Result {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body(&value)
    }
}
