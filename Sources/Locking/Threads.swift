import Glibc

/// POSIX threads, as umdev's concurrency model uses them: each device
/// connection, viewer and control client is served on a thread of its own.
public enum Threads {
    /// Starts `body` on a new thread and returns it, for the caller to join
    /// unless `detached`; nil, with errno set, when no thread could be made.
    @discardableResult
    public static func start(detached: Bool = false, _ body: @escaping @Sendable () -> Void) -> pthread_t? {
        final class Job: Sendable {
            let body: @Sendable () -> Void
            init(_ body: @escaping @Sendable () -> Void) { self.body = body }
        }
        let job = Unmanaged.passRetained(Job(body))
        var t = pthread_t()
        let rc = pthread_create(&t, nil, { arg in
            Unmanaged<Job>.fromOpaque(arg!).takeRetainedValue().body()
            return nil
        }, job.toOpaque())
        guard rc == 0 else {
            job.release()
            errno = rc
            return nil
        }
        if detached { pthread_detach(t) }
        return t
    }
}
