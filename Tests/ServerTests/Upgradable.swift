import Foundation
import Glibc
import Testing
import VFIOUserClient

/// A private directory under /tmp for one test, removed with what it holds
/// when the test lets go of it.
final class ScratchDirectory {
    let path: String
    init(_ prefix: String) {
        path = "/tmp/\(prefix)-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(path, 0o700)
    }
    deinit { _ = try? FileManager.default.removeItem(atPath: path) }
}

/// Starts `argv` (argv[0] the executable) as a child: `environment` added
/// to this process's, stdout to /dev/null, stderr appended to `stderr`,
/// and `fd3`, if given, as its descriptor 3.
func spawnChild(_ argv: [String], environment: [String: String] = [:], stderr: String, fd3: Int32? = nil) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 2, stderr, O_WRONLY | O_CREAT | O_APPEND, 0o600)
    if let fd3 { posix_spawn_file_actions_adddup2(&actions, fd3, 3) }
    var cArgs = argv.map { strdup($0) } + [nil]
    defer { cArgs.forEach { free($0) } }
    var env = ProcessInfo.processInfo.environment
    env.merge(environment) { $1 }
    var cEnv = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { cEnv.forEach { free($0) } }
    var child: pid_t = 0
    let rc = posix_spawn(&child, argv[0], &actions, nil, &cArgs, &cEnv)
    guard rc == 0 else { throw ClientError.system(rc, "posix_spawn \(argv[0])") }
    return child
}

/// A umdev started from a path of the test's own (a symlink to the built
/// umdev) in a scratch directory, so the test decides what binary an
/// upgrade finds there; its log goes to a file the test reads and its
/// notifications to `manager`. `UpgradableServer` and `UpgradableDaemon`
/// say what it runs.
class UpgradableProcess {
    let scratch: ScratchDirectory
    var directory: String { scratch.path }
    let binary: String
    let log: String
    let pid: pid_t
    let manager: NotifySocket

    /// `arguments` follow the binary; `what` names it in a failure.
    init(_ scratch: ScratchDirectory, arguments: [String], fd3: Int32? = nil, what: String) throws {
        self.scratch = scratch
        binary = scratch.path + "/umdev"
        log = scratch.path + "/log"
        symlink(umdevExecutable(), binary)
        manager = try NotifySocket()
        let child = try spawnChild([binary] + arguments, environment: manager.environment, stderr: log, fd3: fd3)
        pid = child
        manager.waitReady(what, exited: { waitpid(child, nil, WNOHANG) != 0 })
    }

    /// Replaces what is at the binary's path with a shell script.
    func replaceBinary(withScript body: String) {
        unlink(binary)
        _ = FileManager.default.createFile(atPath: binary, contents: Data("#!/bin/sh\n\(body)\n".utf8),
                                           attributes: [.posixPermissions: 0o755])
    }

    /// Puts the built umdev back at the binary's path.
    func restoreBinary() {
        unlink(binary)
        symlink(umdevExecutable(), binary)
    }

    func logText() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    var isRunning: Bool { waitpid(pid, nil, WNOHANG) == 0 }

    deinit {
        kill(pid, SIGKILL)
        waitpid(pid, nil, 0)
    }
}
