import KernelCore
import NIOConcurrencyHelpers
import NIOCore

/// A group's idle upstream connections (nginx's `keepalive` cache of an `upstream` block), one cache per event
/// loop: a connection is only ever used by requests of the loop it lives on, so each cache is touched by one
/// thread and needs no lock beyond finding it.
///
/// Every engine of a group (each location that names it) shares the group's pool: `shared(for:)` hands out one
/// pool per group object.
final class UpstreamConnectionPool: Sendable {
    let settings: UpstreamKeepalive
    private let caches = NIOLockedValueBox<[ObjectIdentifier: IdleConnectionCache]>([:])

    init(settings: UpstreamKeepalive) {
        self.settings = settings
    }

    /// The cache of `eventLoop`'s idle connections.
    func cache(on eventLoop: any EventLoop) -> IdleConnectionCache {
        let key = ObjectIdentifier(eventLoop)
        return caches.withLockedValue { caches in
            if let cache = caches[key] { return cache }
            let cache = IdleConnectionCache(settings: settings, eventLoop: eventLoop)
            caches[key] = cache
            return cache
        }
    }

    /// Closes every idle connection (a test's teardown, a configuration that is gone).
    func closeIdle() {
        for cache in caches.withLockedValue({ Array($0.values) }) {
            cache.eventLoop.execute { cache.closeAll() }
        }
    }

    // MARK: - One pool per group

    // Weak references, read and written under the registry's lock only.
    private struct Entry: @unchecked Sendable {
        weak var group: AnyObject?
        weak var pool: UpstreamConnectionPool?
    }

    private static let registry = NIOLockedValueBox<[ObjectIdentifier: Entry]>([:])

    /// The pool of `group`, nil when it keeps no connections. Groups that are objects (an `upstreams:` group) get
    /// one pool however many locations use them; a value group gets a pool of its own per engine.
    static func shared(for group: any UpstreamGroup) -> UpstreamConnectionPool? {
        guard let settings = group.keepalive, settings.connections > 0 else { return nil }
        guard type(of: group) is AnyObject.Type else { return UpstreamConnectionPool(settings: settings) }
        let object = group as AnyObject
        let key = ObjectIdentifier(object)
        return registry.withLockedValue { registry in
            if let entry = registry[key], entry.group === object, let pool = entry.pool, pool.settings == settings {
                return pool
            }
            registry = registry.filter { $0.value.group != nil && $0.value.pool != nil }
            let pool = UpstreamConnectionPool(settings: settings)
            registry[key] = Entry(group: object, pool: pool)
            return pool
        }
    }
}

/// One event loop's idle connections to a group's peers, most recently used last. Used on its event loop only.
final class IdleConnectionCache: @unchecked Sendable {
    let settings: UpstreamKeepalive
    let eventLoop: any EventLoop
    private var idle: [UpstreamConnection] = []

    init(settings: UpstreamKeepalive, eventLoop: any EventLoop) {
        self.settings = settings
        self.eventLoop = eventLoop
    }

    /// Idle connections held (for tests).
    var count: Int { idle.count }

    /// The most recently used idle connection to `peer`, taken out of the cache.
    func take(_ peer: PeerAddress) -> UpstreamConnection? {
        eventLoop.preconditionInEventLoop()
        guard let index = idle.lastIndex(where: { $0.peer == peer }) else { return nil }
        let connection = idle.remove(at: index)
        connection.keepalive.leaveIdle()
        return connection
    }

    /// Keeps `connection` for the next request to its peer; the least recently used one is closed when the cache
    /// is full (as nginx's cache drops its oldest).
    func put(_ connection: UpstreamConnection) {
        eventLoop.preconditionInEventLoop()
        guard connection.channel.isActive else { return }
        if idle.count >= settings.connections {
            let oldest = idle.removeFirst()
            oldest.channel.close(promise: nil)
        }
        idle.append(connection)
        connection.keepalive.enterIdle(timeout: settings.timeout) { [weak self] in
            self?.remove(connection)
        }
    }

    /// An answer ended on `connection` and it may serve another request: it goes into the cache, its reader
    /// (`UpstreamConnection.reader`) staying in its pipeline for the next one.
    func keep(_ connection: UpstreamConnection) {
        if connection.channel.isActive {
            put(connection)
        } else {
            connection.channel.close(promise: nil)
        }
    }

    private func remove(_ connection: UpstreamConnection) {
        idle.removeAll { $0 === connection }
    }

    func closeAll() {
        let all = idle
        idle.removeAll()
        for connection in all { connection.channel.close(promise: nil) }
    }
}

/// An upstream connection that may serve several requests: its channel, its peer and how many requests it
/// carried. Its first handler, `UpstreamKeepaliveHandler`, watches it while it is idle; its last, `reader`, reads
/// the answer of each request it carries.
final class UpstreamConnection: @unchecked Sendable {
    let channel: any Channel
    let peer: PeerAddress
    let keepalive: UpstreamKeepaliveHandler
    /// Its decoder's slot.
    let decoderSlot: UpstreamDecoderSlot
    /// The reader of every request the connection carries (`UpstreamConnectionHandler.beginRequest`).
    let reader: UpstreamConnectionHandler
    /// The cache it goes back to: its event loop's, of its group's pool.
    let cache: IdleConnectionCache
    /// Requests sent over this connection so far.
    var requests = 0

    init(channel: any Channel, peer: PeerAddress, keepalive: UpstreamKeepaliveHandler, decoderSlot: UpstreamDecoderSlot,
         reader: UpstreamConnectionHandler, cache: IdleConnectionCache) {
        self.channel = channel
        self.peer = peer
        self.keepalive = keepalive
        self.decoderSlot = decoderSlot
        self.reader = reader
        self.cache = cache
    }
}

/// The response decoder of the request a kept-alive connection carries now: each request puts a fresh one in,
/// and it is emptied while the connection is idle. One `ByteToMessageHandler` then serves the connection for
/// its whole life: removing and adding one per request would defer its removal to a later turn of the loop,
/// and bytes read in between would be lost in it.
final class UpstreamDecoderSlot: @unchecked Sendable {
    var decoder: UpstreamResponseDecoder?
    /// Bytes came after the end of an answer: the peer sent more than it framed, so the connection cannot be
    /// trusted with another request.
    var bytesAfterEnd = false

    init(_ decoder: UpstreamResponseDecoder) { self.decoder = decoder }
}

/// Decodes through the slot's current decoder; while the slot is empty (idle) bytes wait (the keepalive watch in
/// front closes an idle connection that receives any).
struct UpstreamConnectionDecoder: ByteToMessageDecoder {
    typealias InboundOut = UpstreamResponsePart
    let slot: UpstreamDecoderSlot

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard slot.decoder != nil else { return .needMoreData }
        if slot.decoder!.hasEnded, buffer.readableBytes > 0 { slot.bytesAfterEnd = true }
        return try slot.decoder!.decode(context: context, buffer: &buffer)
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        guard slot.decoder != nil else {
            buffer.moveReaderIndex(to: buffer.writerIndex)
            return .needMoreData
        }
        return try slot.decoder!.decodeLast(context: context, buffer: &buffer, seenEOF: seenEOF)
    }
}

/// The first handler of a connection that may be kept alive. While a request uses the connection it only notes
/// whether any byte of the answer arrived (a request on a reused connection that fails before one did was never
/// processed, and may be sent again on a fresh connection). While the connection is idle it keeps a read
/// pending, so that the peer closing it (or sending anything unasked) is seen at once and the connection closes
/// and leaves the cache, and it closes the connection when `keepalive_timeout` passes.
final class UpstreamKeepaliveHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer

    private var context: ChannelHandlerContext?
    /// The connection's `*_read_timeout`, which every request it carries uses (`UpstreamConnectionHandler`).
    let readTimer: UpstreamReadTimer
    /// One scheduled task for `keepalive_timeout`, kept across idle periods: entering idle only moves
    /// `idleDeadline`, and the task, when it fires early, waits again for the moved deadline. So a request on a
    /// pooled connection costs no timer scheduling and cancelling.
    private var idleTimer: Scheduled<Void>?
    /// When the connection, idle, is closed (nil: in use).
    private var idleDeadline: NIODeadline?
    private var onGone: (() -> Void)?
    private(set) var isIdle = false
    /// Bytes of the current request's answer have arrived.
    private(set) var answerStarted = false

    init(readTimer: UpstreamReadTimer) {
        self.readTimer = readTimer
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        idleTimer?.cancel()
        readTimer.cancel()
    }

    /// The connection goes into the cache: a read stays pending, the idle timeout runs; `onGone` is called when
    /// it closes while idle.
    func enterIdle(timeout: TimeAmount, onGone: @escaping () -> Void) {
        guard let context else { return }
        isIdle = true
        self.onGone = onGone
        let deadline = NIODeadline.now() + timeout
        idleDeadline = deadline
        if idleTimer == nil { scheduleIdleTimer(at: deadline, on: context.eventLoop) }
        context.read()
    }

    private func scheduleIdleTimer(at deadline: NIODeadline, on eventLoop: any EventLoop) {
        idleTimer = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) { [self] in
            idleTimer = nil
            // In use now: the next idle period sets the timer again.
            guard isIdle, let current = idleDeadline else { return }
            if current > .now() {
                scheduleIdleTimer(at: current, on: eventLoop)  // idle again since the timer was set
                return
            }
            context?.close(promise: nil)
        }
    }

    /// The connection is taken for a request.
    func leaveIdle() {
        isIdle = false
        onGone = nil
        answerStarted = false
        idleDeadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if isIdle {
            // Nothing is asked of an idle connection: whatever comes is not an answer to anything.
            context.close(promise: nil)
            return
        }
        if unwrapInboundIn(data).readableBytes > 0 { answerStarted = true }
        context.fireChannelRead(data)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if isIdle { gone() }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if isIdle {
            context.close(promise: nil)
            return
        }
        context.fireErrorCaught(error)
    }

    private func gone() {
        idleTimer?.cancel()
        idleTimer = nil
        idleDeadline = nil
        let onGone = self.onGone
        self.onGone = nil
        onGone?()
    }
}
