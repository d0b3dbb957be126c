import Descriptors
import Glibc
import Logging
import SystemPackage
import VFIOUser

/// Which commands a connection may send once VERSION is done: the device
/// socket takes them all; the display socket only those that describe the
/// device, so a viewer can never change it or read its registers.
struct RequestPolicy {
    /// Commands refused with EPERM before they are decoded (nil: none).
    let refused: Set<Command>?
    /// Memory descriptors (region memfds, dmabufs) go out read-only, so a
    /// mapping of them cannot write what the guest reads.
    let readOnlyMemory: Bool

    /// The device socket's: everything. Computed, not a stored static: on
    /// the hot path it inlines to a constant nil and the check disappears,
    /// where a `static let` would be a lazily initialised global to load.
    static var full: RequestPolicy { RequestPolicy(refused: nil, readOnlyMemory: false) }

    /// The display socket's: nothing that changes the device or reads its
    /// registers, and its memory only to look at.
    static let readOnly = RequestPolicy(refused: [
        .dmaMap, .dmaUnmap, .deviceSetIRQs, .regionRead, .regionWrite, .regionWriteMulti,
        .deviceReset, .dirtyPages, .deviceFeature, .migDataRead, .migDataWrite,
    ], readOnlyMemory: true)
}

/// The request path every connection shares: refuse what framing flagged
/// (oversized: E2BIG; more descriptors than the framer holds or than
/// `fdLimit`, the negotiated max_msg_fds: EINVAL), apply `policy`, decode,
/// hold VERSION to coming first and once, route, and turn a failure into
/// one errno reply (none to a reply or a posted message). Only the end of
/// the channel is thrown.
@inline(__always)
func handleMessage<C: MessageChannel>(_ m: InboundMessage, on transport: Transport<C>, policy: RequestPolicy,
                                      negotiated: Bool, fdLimit: Int, logger: Logger,
                                      route: (Request, Header, Int) throws -> Void) throws(TransportEnd) {
    let h = m.header
    if m.oversized {
        logger.debug("refusing \(h.messageSize)-byte message (limit \(transport.maxMessageSize))")
        if h.wantsReply { try transport.sendError(to: h, errno: E2BIG) }
        return
    }
    if m.fdOverflow || m.fdCount > fdLimit {
        transport.closeFDs()
        if h.wantsReply { try transport.sendError(to: h, errno: EINVAL) }
        return
    }
    do {
        if let refused = policy.refused, negotiated, h.isCommand, let c = Command(rawValue: h.command), refused.contains(c) {
            throw ProtocolError(EPERM, "the display socket does not change the device")
        }
        let request = try Request.decode(h, payload: m.payload, fdCount: m.fdCount)
        if !negotiated {
            guard case .version = request else { throw ProtocolError.invalid("VERSION must come first") }
        } else if case .version = request {
            throw ProtocolError.invalid("VERSION already negotiated")
        }
        try route(request, h, m.fdCount)
    } catch let failure as ProtocolError {
        try refuse(h, failure, on: transport, logger: logger)
    } catch let end as TransportEnd {
        throw end
    } catch {
        if h.wantsReply { try transport.sendError(to: h, errno: EIO) }
    }
}

/// Answers a refused message: its descriptors are closed, and a command
/// that wants a reply gets one with the errno (a reply nobody asked for gets
/// nothing: answering it would confuse the client).
@inline(never)
func refuse<C: MessageChannel>(_ h: Header, _ failure: ProtocolError, on transport: Transport<C>, logger: Logger) throws(TransportEnd) {
    transport.closeFDs()
    if h.isReply {
        logger.debug("dropping unsolicited reply to command \(h.command)")
        return
    }
    logger.debug("\(Command(rawValue: h.command)?.name ?? "command \(h.command)"): \(failure)")
    if h.wantsReply { try transport.sendError(to: h, errno: failure.errno) }
}

extension DeviceDescription {
    /// Answers the commands that only describe the device (the same on the
    /// device and the display socket). `gfx`: the client negotiated the
    /// plane extension; `readOnlyMemory`: memory descriptors go out as
    /// read-only views. Returns false for any other command.
    func answerQuery<C: MessageChannel>(_ request: Request, header h: Header, gfx: Bool, readOnlyMemory: Bool = false,
                                        writer w: inout MessageWriter, transport: Transport<C>) throws -> Bool {
        /// The reply with `fd`: the device's own descriptor, or a read-only
        /// one of the same memory (opened afresh through /proc, as mapping
        /// permissions follow the open file, not the memory).
        func reply(_ w: MessageWriter, sharing fd: FileDescriptor?) throws {
            guard readOnlyMemory, let fd else { return try transport.reply(w, to: h, fd: fd) }
            guard let view = OwnedDescriptor(adoptingRaw: open("/proc/self/fd/\(fd.rawValue)", O_RDONLY | O_CLOEXEC)) else {
                throw ProtocolError(errno, "cannot open a read-only view of the device's memory")
            }
            try transport.reply(w, to: h, fd: view.fileDescriptor)
        }
        switch request {
        case .deviceGetInfo:
            deviceInfo(into: &w)
            try transport.reply(w, to: h)
        case .deviceGetRegionInfo(let argsz, let index):
            let fd = try regionInfo(index: index, argsz: argsz, into: &w)
            try reply(w, sharing: fd)
        case .deviceGetRegionIOFDs(_, let index):
            try regionIOFDs(index: index, into: &w)
            try transport.reply(w, to: h)
        case .deviceGetIRQInfo(_, let index):
            try irqInfo(index: index, into: &w)
            try transport.reply(w, to: h)
        case .queryGfxPlane(let q):
            guard gfx else { throw ProtocolError.invalid("unknown command") }
            try display.answer(q, into: &w)
            try transport.reply(w, to: h)
        case .getGfxDmabuf(let id):
            guard gfx else { throw ProtocolError.invalid("unknown command") }
            let fd = try display.dmabuf(id: id, into: &w)
            try reply(w, sharing: fd)
        default:
            return false
        }
        return true
    }
}
