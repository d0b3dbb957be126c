import CShim
import Glibc
import Logging
import PCI
import ServiceManager

/// `--supervise`: where there is no service manager (a container, a
/// shell), a small parent plays its part for one `umdev serve` or
/// `umdev daemon` child, speaking the same protocol systemd would: it holds
/// the child's fd store (`ServiceManager.FDStore`), starts it with
/// `--fd-store`, and
///
/// - SIGHUP: restarts it keeping every device (SIGTERM to the child, which
///   hands everything to the store; a start with what the store keeps);
/// - SIGUSR2: passes it on (a live upgrade, the child's pid unchanged);
/// - SIGTERM, SIGINT: stops it (SIGINT to the child, which stops every
///   device as it always does) and exits with its status;
/// - a child that dies (a signal, a non-zero status) is started again, at
///   once if it had told it was ready, else after 0.1 s doubling to 5 s
///   while it keeps dying before that, with what the store keeps: every device, its state as of
///   its last answered request (StateKeeper). A child that exits 0 ends
///   the parent.
enum Supervisor {
    static let firstDelay = 0.1, maxDelay = 5.0, steadySeconds = 10.0

    /// Runs the child from `arguments` (this process's, `--supervise`
    /// removed) until it is stopped; never returns.
    static func run(arguments: [String], logger: Logger) -> Never {
        // Every signal the parent acts on arrives here, in sigtimedwait.
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGHUP, SIGUSR2, SIGTERM, SIGINT, SIGCHLD] { sigaddset(&set, s) }
        pthread_sigmask(SIG_BLOCK, &set, nil)
        var template = Array("/tmp/umdev-supervise-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else {
            logger.critical("cannot make the supervisor's directory: \(String(cString: strerror(errno)))")
            exit(1)
        }
        let dir = String(cString: made)
        let store: FDStore
        do { store = try FDStore(path: dir + "/notify") } catch {
            logger.critical("\(error)")
            exit(1)
        }
        let binary = Serve.startedFrom
        let childArguments = Array(arguments.dropFirst().filter { $0 != "--supervise" }) + ["--fd-store"]
        // The child's signal mask is its own: the parent's blocked set must not leak into it.
        func start() -> pid_t? {
            var none = sigset_t()
            sigemptyset(&none)
            var old = sigset_t()
            pthread_sigmask(SIG_SETMASK, &none, &old)
            defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
            do { return try store.start(binary, childArguments, stdout: true) } catch {
                logger.error("cannot start the child: \(error)")
                return nil
            }
        }
        func finish(_ status: Int32) -> Never {
            store.flush()
            unlink(dir + "/notify")
            rmdir(dir)
            exit(status)
        }
        var delay = firstDelay
        var readies = 0
        var readiesAtStart = 0
        var told = false
        guard var child = start() else { finish(1) }
        var startedAt = monotonicSeconds()
        logger.notice("supervising \(binary) \(childArguments.joined(separator: " ")) (pid \(child))")
        var stopping = false
        while true {
            var timeout = timespec(tv_sec: 0, tv_nsec: 100_000_000)
            let signal = sigtimedwait(&set, nil, &timeout)
            if !told, store.readies > readies {
                readies = store.readies
                told = true
                ServiceManager.notify("READY=1\nMAINPID=\(getpid())\nSTATUS=supervising pid \(child)")
            }
            switch signal {
            case SIGHUP:
                logger.notice("SIGHUP: restarting pid \(child) through the fd store")
                kill(child, SIGTERM)
                let status = wait(child)
                store.settle()
                logger.info("pid \(child) exited (\(describe(status))); \(store.stored.count) descriptor(s) kept")
                readiesAtStart = store.readies
                guard let next = start() else { finish(1) }
                child = next
                startedAt = monotonicSeconds()
            case SIGUSR2:
                kill(child, SIGUSR2)
            case SIGTERM, SIGINT:
                logger.notice("signal \(signal): stopping pid \(child)")
                stopping = true
                kill(child, SIGINT)
            default:
                break
            }
            var status: Int32 = 0
            let r = waitpid(child, &status, WNOHANG)
            guard r == child else { continue }
            if stopping || (status & 0x7f == 0 && (status >> 8) & 0xff == 0) {
                logger.notice("pid \(child) exited (\(describe(status))); the supervisor ends")
                finish(status & 0x7f == 0 ? (status >> 8) & 0xff : 1)
            }
            let ran = monotonicSeconds() - startedAt
            // A child that was serving starts again at once: its clients wait meanwhile
            // (QEMU gives up on a reply after 5 s). One that never got as far backs off.
            let served = store.readies > readiesAtStart
            delay = ran >= steadySeconds || served ? firstDelay : min(maxDelay, delay * 2)
            let wait = served ? 0 : delay
            logger.error("pid \(child) \(describe(status)) after \(Int(ran * 1000)) ms; starting it again in \(Int(wait * 1000)) ms")
            if wait > 0 { usleep(UInt32(wait * 1e6)) }
            readiesAtStart = store.readies
            guard let next = start() else { finish(1) }
            child = next
            startedAt = monotonicSeconds()
        }
    }

    private static func wait(_ pid: pid_t) -> Int32 {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return status
    }

    private static func describe(_ status: Int32) -> String {
        let signal = status & 0x7f
        return signal == 0 ? "status \((status >> 8) & 0xff)" : "killed by signal \(signal)"
    }

    private static func monotonicSeconds() -> Double { Double(monotonicNanoseconds()) / 1e9 }
}
