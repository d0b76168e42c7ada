import KernelCore
import XCTest
@testable import HTTP

/// The HTTP connection's rules on their own: events in, actions out, no channel.
final class HTTPConnectionStateMachineTests: XCTestCase {
    typealias Machine = HTTPConnectionStateMachine

    private func head(length: Int = 0, chunked: Bool = false, method: String = "GET", version: ProtocolVersion = .http1_1,
                      keepAlive: Bool = true, expectContinue: Bool = false, admitted: Bool = true, streams: Bool = false,
                      discards: Bool = false, inputPending: Bool = false) -> Machine.RoutedHead {
        Machine.RoutedHead(keepAliveWanted: keepAlive, isHead: method == "HEAD", version: version, contentLength: length,
                           chunked: chunked, expectContinue: expectContinue, bodyAdmitted: admitted,
                           handlerStreamsBody: streams, handlerDiscardsBody: discards, inputPending: inputPending)
    }

    private func idle(keepaliveRequests: Int = 100) -> Machine {
        var machine = Machine(keepaliveRequests: keepaliveRequests)
        XCTAssertEqual(machine.channelActive(), .header)
        return machine
    }

    private func processing(_ routed: Machine.RoutedHead? = nil, keepaliveRequests: Int = 100) -> Machine {
        var machine = idle(keepaliveRequests: keepaliveRequests)
        _ = machine.headReceived()
        XCTAssertEqual(machine.requestRouted(routed ?? head()), .start)
        return machine
    }

    private func readingBody() -> Machine {
        var machine = idle()
        _ = machine.headReceived()
        XCTAssertEqual(machine.requestRouted(head(length: 10)), .readBody(sendContinue: false))
        return machine
    }

    private func writingStream(version: ProtocolVersion = .http1_1, declared: Int? = nil) -> Machine {
        var machine = processing(head(version: version))
        XCTAssertNotNil(machine.responseReady(status: 200, streamed: true, bodyLength: 0, declaredLength: { declared }))
        XCTAssertEqual(machine.phase, .writingStream)
        return machine
    }

    private func closing() -> Machine {
        var machine = idle()
        XCTAssertEqual(machine.refuse(), .afterWrites(linger: true))
        return machine
    }

    // MARK: - Opening and the input loop

    func testTheHeaderTimeoutStartsOnceWhenTheConnectionOpens() {
        var machine = idle()
        XCTAssertNil(machine.channelActive())
        XCTAssertEqual(machine.timer, .header)
        XCTAssertEqual(machine.phase, .awaitingHead)
    }

    func testNextStepInEveryPhase() {
        var machine = idle()
        XCTAssertEqual(machine.nextStep(inputAvailable: false, writable: true), .stop(dropInput: true))
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .parseHead)
        var reading = readingBody()
        XCTAssertEqual(reading.nextStep(inputAvailable: true, writable: true), .readBody)
        var busy = processing()
        XCTAssertEqual(busy.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        var streaming = writingStream()
        XCTAssertEqual(streaming.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        var unbuffered = idle()
        _ = unbuffered.headReceived()
        XCTAssertEqual(unbuffered.requestRouted(head(length: 10, streams: true)), .streamBody(sendContinue: false))
        XCTAssertEqual(unbuffered.nextStep(inputAvailable: true, writable: true), .feedBodyStream)
        var done = closing()
        XCTAssertEqual(done.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        XCTAssertFalse(done.acceptsInput)
        _ = done.channelInactive()
        XCTAssertEqual(done.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
    }

    func testAClientThatDoesNotReadGetsNoMoreRequestsParsedUntilItDoes() {
        var machine = idle()
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: false), .waitForWritability)
        XCTAssertTrue(machine.waitingForWritability)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        XCTAssertNil(machine.writabilityChanged(writable: false, writesPending: false, inputPending: true))
        let resumed = machine.writabilityChanged(writable: true, writesPending: false, inputPending: true)
        XCTAssertEqual(resumed?.stopSendTimeout, true)
        XCTAssertEqual(resumed?.armKeepalive, false)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .parseHead)
        XCTAssertNil(machine.writabilityChanged(writable: true, writesPending: false, inputPending: false))
    }

    func testWritabilityBackWithWritesPendingKeepsTheSendTimeoutAndAnIdleOneStartsKeepalive() {
        var machine = processing()
        _ = machine.responseReady(status: 200, streamed: false, bodyLength: 5, declaredLength: { nil })
        XCTAssertEqual(machine.responseSent(close: false, inputPending: false, writable: false, writesPending: true),
                       .keepOpen(waitForWritability: true, dropInput: false, armKeepalive: false))
        XCTAssertEqual(machine.writabilityChanged(writable: true, writesPending: true, inputPending: false)?.stopSendTimeout, false)
        var other = processing()
        _ = other.responseReady(status: 200, streamed: false, bodyLength: 5, declaredLength: { nil })
        _ = other.responseSent(close: false, inputPending: false, writable: false, writesPending: false)
        let resumed = other.writabilityChanged(writable: true, writesPending: false, inputPending: false)
        XCTAssertEqual(resumed?.stopSendTimeout, true)
        XCTAssertEqual(resumed?.armKeepalive, true)
        XCTAssertEqual(other.timer, .keepalive)
    }

    func testReadsPauseWhileBusyWithEnoughBufferedAndWhileAnUnbufferedBodysConsumerIsBehind() {
        let machine = idle()
        XCTAssertTrue(machine.shouldRead(bufferedInput: 1 << 20, maxBufferedInput: 100, bodyStreamFull: false))
        let busy = processing()
        XCTAssertTrue(busy.shouldRead(bufferedInput: 99, maxBufferedInput: 100, bodyStreamFull: false))
        XCTAssertFalse(busy.shouldRead(bufferedInput: 100, maxBufferedInput: 100, bodyStreamFull: false))
        XCTAssertFalse(writingStream().shouldRead(bufferedInput: 100, maxBufferedInput: 100, bodyStreamFull: false))
        var unbuffered = idle()
        _ = unbuffered.headReceived()
        _ = unbuffered.requestRouted(head(length: 10, streams: true))
        XCTAssertTrue(unbuffered.shouldRead(bufferedInput: 1 << 20, maxBufferedInput: 100, bodyStreamFull: false))
        XCTAssertFalse(unbuffered.shouldRead(bufferedInput: 0, maxBufferedInput: 100, bodyStreamFull: true))
    }

    // MARK: - Heads

    func testAHeadInPartsRunsTheHeaderTimeoutFromItsFirstBytes() {
        var machine = idle()
        XCTAssertNil(machine.headIncomplete(), "already running since the connection opened")
        var kept = processing()
        _ = kept.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil })
        _ = kept.responseSent(close: false, inputPending: false, writable: true, writesPending: false)
        XCTAssertEqual(kept.timer, .keepalive)
        XCTAssertEqual(kept.headIncomplete(), .header)
        XCTAssertNil(kept.headIncomplete())
    }

    func testHeadsAreCountedAndStopTheHeadTimer() {
        var machine = idle()
        XCTAssertEqual(machine.headReceived(), 1)
        XCTAssertNil(machine.timer)
        XCTAssertEqual(machine.requestRouted(head()), .start)
        _ = machine.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil })
        _ = machine.responseSent(close: false, inputPending: true, writable: true, writesPending: false)
        XCTAssertEqual(machine.headReceived(), 2)
        XCTAssertEqual(machine.requestsStarted, 2)
    }

    func testRoutedHeadsLeadToTheirBodyHandling() {
        var machine = idle()
        _ = machine.headReceived()
        XCTAssertEqual(machine.requestRouted(head(length: 10, admitted: false)), .refuseTooLarge)
        XCTAssertEqual(machine.refuse(), .afterWrites(linger: true))

        var expecting = idle()
        _ = expecting.headReceived()
        XCTAssertEqual(expecting.requestRouted(head(length: 10, expectContinue: true)), .readBody(sendContinue: true))
        XCTAssertEqual(expecting.phase, .readingBody)
        XCTAssertEqual(expecting.timer, .body)

        for (routed, label) in [(head(length: 10, expectContinue: true, inputPending: true), "body bytes came with the head"),
                                (head(length: 10, version: .http1_0, expectContinue: true), "HTTP/1.0")] {
            var machine = idle()
            _ = machine.headReceived()
            XCTAssertEqual(machine.requestRouted(routed), .readBody(sendContinue: false), label)
        }

        var chunked = idle()
        _ = chunked.headReceived()
        XCTAssertEqual(chunked.requestRouted(head(chunked: true, streams: true)), .readBody(sendContinue: false),
                       "a chunked body is read whole even for a streaming handler")

        var streamed = idle()
        _ = streamed.headReceived()
        XCTAssertEqual(streamed.requestRouted(head(length: 10, streams: true)), .streamBody(sendContinue: false))
        XCTAssertEqual(streamed.phase, .processing)
        XCTAssertEqual(streamed.timer, .body)
    }

    func testKeepAliveRules() {
        func closes(_ machine: inout Machine) -> Bool {
            guard case .writeBuffered(_, _, let close)? = machine.responseReady(status: 200, streamed: false, bodyLength: 1,
                                                                               declaredLength: { nil }) else {
                XCTFail("no response action")
                return false
            }
            return close
        }
        var wanted = processing()
        XCTAssertFalse(closes(&wanted))
        var refused = processing(head(keepAlive: false))
        XCTAssertTrue(closes(&refused))
        var last = processing(keepaliveRequests: 1)
        XCTAssertTrue(closes(&last), "keepalive_requests reached")
        var quiesced = processing()
        XCTAssertNil(quiesced.quiesce(requestBytesSeen: false))
        XCTAssertTrue(closes(&quiesced))
    }

    // MARK: - Bodies

    func testBodyProgressRestartsTheBodyTimeoutAndTheEndStartsTheExchange() {
        var machine = readingBody()
        XCTAssertEqual(machine.bodyProgressed(), .body)
        machine.bodyCompleted()
        XCTAssertEqual(machine.phase, .processing)
        XCTAssertNil(machine.timer)
    }

    func testTheEndOfAnUnbufferedBodyStopsOnlyTheBodyTimeout() {
        var machine = idle()
        _ = machine.headReceived()
        _ = machine.requestRouted(head(length: 10, streams: true))
        XCTAssertEqual(machine.bodyProgressed(), .body)
        machine.bodyStreamCompleted()
        XCTAssertNil(machine.timer)
        XCTAssertEqual(machine.request?.bodyStreaming, false)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
    }

    func testADiscardedBodyDoesNotHoldTheAnswerBackAndIsReadBeforeTheNextRequest() {
        var machine = idle()
        _ = machine.headReceived()
        XCTAssertEqual(machine.requestRouted(head(length: 10, expectContinue: true, discards: true)),
                       .discardBody(sendContinue: true))
        XCTAssertEqual(machine.phase, .processing, "the handler runs at once")
        XCTAssertNil(machine.timer, "no read timer while the answer is made")
        XCTAssertTrue(machine.shouldRead(bufferedInput: 1 << 20, maxBufferedInput: 1024, bodyStreamFull: false),
                      "dropped bytes never pile up")
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .discardBody)
        XCTAssertNil(machine.bodyDiscardProgressed(), "before the answer nothing times the body")
        guard case .writeBuffered(_, _, let close)? = machine.responseReady(status: 200, streamed: false, bodyLength: 2,
                                                                            declaredLength: { nil }) else {
            return XCTFail("no response action")
        }
        XCTAssertFalse(close, "the connection stays open: the body's end is known")
        XCTAssertEqual(machine.responseSent(close: false, inputPending: false, writable: true, writesPending: false),
                       .keepOpen(waitForWritability: false, dropInput: false, armKeepalive: false, armDiscard: true))
        XCTAssertEqual(machine.timer, .discard)
        XCTAssertEqual(machine.phaseDescription(requestBytesSeen: false), "reading client request body")
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .discardBody,
                       "the rest of the body comes before any next head")
        XCTAssertEqual(machine.bodyDiscardProgressed(), .discard)
        XCTAssertNil(machine.writesDrained(inputPending: false), "no keepalive_timeout while the body comes")
        XCTAssertEqual(machine.bodyDiscarded(inputPending: false, writesPending: false), .keepalive)
        XCTAssertFalse(machine.discardingBody)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .parseHead)

        // Pipelined input behind the body: the next head is parsed, no keepalive timer.
        var pipelined = idle()
        _ = pipelined.headReceived()
        _ = pipelined.requestRouted(head(chunked: true, discards: true))
        _ = pipelined.responseReady(status: 404, streamed: false, bodyLength: 2, declaredLength: { nil })
        _ = pipelined.responseSent(close: false, inputPending: true, writable: true, writesPending: false)
        XCTAssertNil(pipelined.bodyDiscarded(inputPending: true, writesPending: false))
        XCTAssertEqual(pipelined.nextStep(inputAvailable: true, writable: true), .parseHead)
    }

    func testADiscardedBodyThatStallsOrBreaksAfterItsAnswerClosesTheConnection() {
        var stalled = idle()
        _ = stalled.headReceived()
        _ = stalled.requestRouted(head(length: 10, discards: true))
        _ = stalled.responseReady(status: 200, streamed: false, bodyLength: 2, declaredLength: { nil })
        _ = stalled.responseSent(close: false, inputPending: false, writable: true, writesPending: false)
        XCTAssertEqual(stalled.timerFired(requestBytesSeen: false, inputPending: false), .close)
        XCTAssertEqual(stalled.phase, .closing)

        var broken = idle()
        _ = broken.headReceived()
        _ = broken.requestRouted(head(chunked: true, discards: true))
        _ = broken.responseReady(status: 200, streamed: false, bodyLength: 2, declaredLength: { nil })
        _ = broken.responseSent(close: false, inputPending: false, writable: true, writesPending: false)
        XCTAssertEqual(broken.bodyDiscardFailed(), .afterWrites(linger: false))

        // Broken before the answer: the answer goes out with `Connection: close`, lingering.
        var early = idle()
        _ = early.headReceived()
        _ = early.requestRouted(head(chunked: true, discards: true))
        XCTAssertNil(early.bodyDiscardFailed())
        guard case .writeBuffered(_, _, let close)? = early.responseReady(status: 200, streamed: false, bodyLength: 2,
                                                                          declaredLength: { nil }) else {
            return XCTFail("no response action")
        }
        XCTAssertTrue(close)

        // An answer that closes anyway (HTTP/1.0) drains the rest lingering.
        var closing = idle()
        _ = closing.headReceived()
        _ = closing.requestRouted(head(length: 10, version: .http1_0, keepAlive: false, discards: true))
        _ = closing.responseReady(status: 200, streamed: false, bodyLength: 2, declaredLength: { nil })
        XCTAssertEqual(closing.responseSent(close: true, inputPending: false, writable: true, writesPending: false),
                       .close(abandonBody: false, linger: true))
        XCTAssertFalse(closing.discardingBody)

        // Too large by its declared length is still refused before a byte is read (client_max_body_size).
        var large = idle()
        _ = large.headReceived()
        XCTAssertEqual(large.requestRouted(head(length: 10, admitted: false, discards: true)), .refuseTooLarge)
    }

    // MARK: - Responses

    func testBufferedResponsesAreFramedByLengthWithoutABodyWhereNoneGoesOut() {
        var plain = processing()
        XCTAssertEqual(plain.responseReady(status: 200, streamed: false, bodyLength: 5, declaredLength: { 99 }),
                       .writeBuffered(framing: .length(5), sendBody: true, close: false))
        var head = processing(self.head(method: "HEAD"))
        XCTAssertEqual(head.responseReady(status: 200, streamed: false, bodyLength: 5, declaredLength: { 99 }),
                       .writeBuffered(framing: .length(5), sendBody: false, close: false))
        var bodilessHead = processing(self.head(method: "HEAD"))
        XCTAssertEqual(bodilessHead.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { 99 }),
                       .writeBuffered(framing: .length(99), sendBody: false, close: false),
                       "a bodiless answer to HEAD keeps the declared length")
        for status in [100, 204, 304] {
            var machine = processing()
            XCTAssertEqual(machine.responseReady(status: status, streamed: false, bodyLength: 5, declaredLength: { nil }),
                           .writeBuffered(framing: .none, sendBody: false, close: false), "\(status)")
        }
        var notModified = processing()
        XCTAssertEqual(notModified.responseReady(status: 304, streamed: false, bodyLength: 0, declaredLength: { 1234 }),
                       .writeBuffered(framing: .length(1234), sendBody: false, close: false))
    }

    func testStreamedResponsesAreChunkedCloseDelimitedOrLengthFramed() {
        var chunked = processing()
        XCTAssertEqual(chunked.responseReady(status: 200, streamed: true, bodyLength: 0, declaredLength: { nil }),
                       .writeStreamHead(framing: .chunked, close: false))
        var old = processing(head(version: .http1_0))
        XCTAssertEqual(old.responseReady(status: 200, streamed: true, bodyLength: 0, declaredLength: { nil }),
                       .writeStreamHead(framing: .closeDelimited, close: true))
        var declared = processing()
        XCTAssertEqual(declared.responseReady(status: 200, streamed: true, bodyLength: 0, declaredLength: { 7 }),
                       .writeStreamHead(framing: .length(7), close: false))
        var head = processing(self.head(method: "HEAD"))
        XCTAssertEqual(head.responseReady(status: 200, streamed: true, bodyLength: 0, declaredLength: { nil }),
                       .writeHeadOnly(framing: .none, close: false))
        XCTAssertEqual(head.phase, .processing)
        var notModified = processing()
        XCTAssertEqual(notModified.responseReady(status: 304, streamed: true, bodyLength: 0, declaredLength: { 7 }),
                       .writeHeadOnly(framing: .length(7), close: false),
                       "a 304 keeps the length of what it stands for (an upstream's), with no body")
        var noContent = processing()
        XCTAssertEqual(noContent.responseReady(status: 204, streamed: true, bodyLength: 0, declaredLength: { 7 }),
                       .writeHeadOnly(framing: .none, close: false), "a 204 never says a length")
    }

    func testAResponseIsTakenOnlyWhileOneIsAwaited() {
        var machine = idle()
        XCTAssertNil(machine.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil }))
        var reading = readingBody()
        XCTAssertNil(reading.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil }))
        var streaming = writingStream()
        XCTAssertNil(streaming.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil }))
        var done = closing()
        XCTAssertNil(done.responseReady(status: 200, streamed: false, bodyLength: 0, declaredLength: { nil }))
    }

    func testStreamPartsAreWrittenChunkedAndCheckedAgainstTheDeclaredLength() {
        let chunked = writingStream()
        XCTAssertEqual(chunked.streamPartArrived(length: 0, sentSoFar: 0), .pullNext)
        XCTAssertEqual(chunked.streamPartArrived(length: 5, sentSoFar: 0), .write(chunked: true))
        XCTAssertTrue(chunked.streamPartWritten(succeeded: true))
        XCTAssertFalse(chunked.streamPartWritten(succeeded: false))
        XCTAssertEqual(chunked.streamEnded(sent: 5), Machine.StreamEnd(writeLastChunk: true, close: false, shortOfDeclared: nil))

        let declared = writingStream(declared: 7)
        XCTAssertEqual(declared.streamPartArrived(length: 7, sentSoFar: 0), .write(chunked: false))
        XCTAssertEqual(declared.streamPartArrived(length: 3, sentSoFar: 5), .abortLongerThanDeclared(7))
        XCTAssertEqual(declared.streamEnded(sent: 7), Machine.StreamEnd(writeLastChunk: false, close: false, shortOfDeclared: nil))
        XCTAssertEqual(declared.streamEnded(sent: 4), Machine.StreamEnd(writeLastChunk: false, close: true, shortOfDeclared: 7))

        let old = writingStream(version: .http1_0)
        XCTAssertEqual(old.streamEnded(sent: 4), Machine.StreamEnd(writeLastChunk: false, close: true, shortOfDeclared: nil))

        for machine in [processing(), closing(), idle()] {
            XCTAssertEqual(machine.streamPartArrived(length: 5, sentSoFar: 0), .ignore)
            XCTAssertFalse(machine.streamPartWritten(succeeded: true))
            XCTAssertNil(machine.streamEnded(sent: 0))
        }
    }

    func testAfterAResponseTheConnectionWaitsForTheNextRequestOrCloses() {
        var kept = processing()
        _ = kept.responseReady(status: 200, streamed: false, bodyLength: 1, declaredLength: { nil })
        XCTAssertEqual(kept.responseSent(close: false, inputPending: false, writable: true, writesPending: false),
                       .keepOpen(waitForWritability: false, dropInput: true, armKeepalive: true))
        XCTAssertEqual(kept.phase, .awaitingHead)
        XCTAssertEqual(kept.timer, .keepalive)
        XCTAssertNil(kept.request)

        var leaving = processing()
        XCTAssertEqual(leaving.responseSent(close: false, inputPending: false, writable: true, writesPending: true),
                       .keepOpen(waitForWritability: false, dropInput: true, armKeepalive: false),
                       "keepalive_timeout waits until the response has left")
        XCTAssertEqual(leaving.writesDrained(inputPending: false), .keepalive)

        var pipelined = processing()
        XCTAssertEqual(pipelined.responseSent(close: false, inputPending: true, writable: true, writesPending: false),
                       .keepOpen(waitForWritability: false, dropInput: false, armKeepalive: false))
        XCTAssertEqual(pipelined.nextStep(inputAvailable: true, writable: true), .parseHead)

        var closed = processing()
        XCTAssertEqual(closed.responseSent(close: true, inputPending: true, writable: true, writesPending: false),
                       .close(abandonBody: false, linger: true))
        XCTAssertEqual(closed.phase, .closing)

        var quiet = processing()
        XCTAssertEqual(quiet.responseSent(close: true, inputPending: false, writable: true, writesPending: false),
                       .close(abandonBody: false, linger: false))

        var unbuffered = idle()
        _ = unbuffered.headReceived()
        _ = unbuffered.requestRouted(head(length: 10, streams: true))
        XCTAssertEqual(unbuffered.responseReady(status: 200, streamed: false, bodyLength: 1, declaredLength: { nil }),
                       .writeBuffered(framing: .length(1), sendBody: true, close: true))
        XCTAssertEqual(unbuffered.responseSent(close: true, inputPending: false, writable: true, writesPending: false),
                       .close(abandonBody: true, linger: true))
    }

    func testWritesDrainedStartsKeepaliveOnlyOnAnIdleConnectionWithoutATimer() {
        var idleOne = processing()
        _ = idleOne.responseSent(close: false, inputPending: false, writable: true, writesPending: true)
        XCTAssertEqual(idleOne.writesDrained(inputPending: true), nil)
        XCTAssertEqual(idleOne.writesDrained(inputPending: false), .keepalive)
        XCTAssertEqual(idleOne.writesDrained(inputPending: false), nil, "already running")
        var busy = processing()
        XCTAssertNil(busy.writesDrained(inputPending: false))
        var done = closing()
        XCTAssertNil(done.writesDrained(inputPending: false))
    }

    // MARK: - Timers

    func testHeaderTimeoutWithAndWithoutBytesSeen() {
        var partial = idle()
        XCTAssertEqual(partial.timerFired(requestBytesSeen: true, inputPending: true), .refuseTimedOut)
        XCTAssertEqual(partial.phaseDescription(requestBytesSeen: true), "reading client request headers")
        XCTAssertEqual(partial.refuse(), .afterWrites(linger: true))

        var silent = idle()
        XCTAssertEqual(silent.timerFired(requestBytesSeen: false, inputPending: false), .closeWaiting)
        XCTAssertEqual(silent.phase, .closing)

        var busy = processing()
        XCTAssertEqual(busy.timerFired(requestBytesSeen: false, inputPending: false), .none, "no timer runs")
    }

    func testBodyTimeoutRefusesABufferedBodyAndAbortsAnUnbufferedOne() {
        var buffered = readingBody()
        XCTAssertEqual(buffered.timerFired(requestBytesSeen: false, inputPending: false), .refuseTimedOut)
        XCTAssertEqual(buffered.phaseDescription(requestBytesSeen: false), "reading client request body")

        var unbuffered = idle()
        _ = unbuffered.headReceived()
        _ = unbuffered.requestRouted(head(length: 10, streams: true))
        XCTAssertEqual(unbuffered.timerFired(requestBytesSeen: false, inputPending: false), .abortStalledBody)
        XCTAssertEqual(unbuffered.phase, .closing)

        var finished = readingBody()
        finished.bodyCompleted()
        XCTAssertEqual(finished.timerFired(requestBytesSeen: false, inputPending: false), .none)
    }

    func testKeepaliveTimeoutClosesOnlyAnIdleConnection() {
        var machine = processing()
        _ = machine.responseSent(close: false, inputPending: false, writable: true, writesPending: false)
        XCTAssertEqual(machine.timer, .keepalive)
        XCTAssertEqual(machine.timerFired(requestBytesSeen: false, inputPending: false), .close)
        XCTAssertEqual(machine.phase, .closing)

        var arriving = processing()
        _ = arriving.responseSent(close: false, inputPending: false, writable: true, writesPending: false)
        XCTAssertEqual(arriving.timerFired(requestBytesSeen: true, inputPending: true), .none)
        XCTAssertEqual(arriving.phase, .awaitingHead)
    }

    func testSendTimeoutAbortsTheResponse() {
        var machine = writingStream()
        machine.abort()
        XCTAssertEqual(machine.phase, .closing)
        XCTAssertNil(machine.request)
        XCTAssertEqual(machine.streamPartArrived(length: 1, sentSoFar: 0), .ignore)
        XCTAssertEqual(machine.channelInactive(), .none, "the exchange was finished by the abort")
    }

    func testLingeringEndsWithItsTimerOrTheEndOfInput() {
        var machine = closing()
        XCTAssertEqual(machine.lingeringStarted(), .linger)
        XCTAssertEqual(machine.timerFired(requestBytesSeen: false, inputPending: false), .close)
        var other = closing()
        _ = other.lingeringStarted()
        XCTAssertEqual(other.inputClosed(), .now)
    }

    // MARK: - Ends

    func testQuiesceClosesAnIdleConnectionAndLetsABusyOneFinish() {
        var machine = idle()
        XCTAssertEqual(machine.quiesce(requestBytesSeen: false), .afterWrites(linger: false))
        XCTAssertEqual(machine.phase, .closing)

        var receiving = idle()
        XCTAssertNil(receiving.quiesce(requestBytesSeen: true))
        _ = receiving.headReceived()
        _ = receiving.requestRouted(head())
        XCTAssertEqual(receiving.responseReady(status: 200, streamed: false, bodyLength: 1, declaredLength: { nil }),
                       .writeBuffered(framing: .length(1), sendBody: true, close: true))

        var busy = processing()
        XCTAssertNil(busy.quiesce(requestBytesSeen: false))
        XCTAssertEqual(busy.responseSent(close: false, inputPending: false, writable: true, writesPending: false),
                       .close(abandonBody: false, linger: false))
    }

    func testNothingBehindARefusedRequestIsProcessed() {
        var machine = processing()
        _ = machine.responseReady(status: 200, streamed: false, bodyLength: 1, declaredLength: { nil })
        _ = machine.responseSent(close: false, inputPending: true, writable: true, writesPending: false)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .parseHead)
        XCTAssertEqual(machine.refuse(), .afterWrites(linger: true))
        XCTAssertFalse(machine.acceptsInput)
        XCTAssertEqual(machine.nextStep(inputAvailable: true, writable: true), .stop(dropInput: false))
        XCTAssertNil(machine.responseReady(status: 200, streamed: false, bodyLength: 1, declaredLength: { nil }))
        XCTAssertEqual(machine.timerFired(requestBytesSeen: true, inputPending: true), .none)
        XCTAssertNil(machine.quiesce(requestBytesSeen: false))
        XCTAssertEqual(machine.phaseDescription(requestBytesSeen: true), "closing request")
    }

    func testTheClientLeavingFinishesTheRequestUnderWay() {
        var idleOne = idle()
        XCTAssertEqual(idleOne.channelInactive(), .none)
        XCTAssertEqual(idleOne.phase, .closed)
        var reading = readingBody()
        XCTAssertEqual(reading.channelInactive(), .clientLeft)
        var busy = processing()
        XCTAssertEqual(busy.channelInactive(), .clientLeft)
        var streaming = writingStream()
        XCTAssertEqual(streaming.channelInactive(), .responseCut)
        XCTAssertNil(streaming.request)
        XCTAssertFalse(streaming.acceptsInput)
        var done = closing()
        XCTAssertEqual(done.channelInactive(), .none)
    }

    func testInputClosedClosesInEveryPhase() {
        for var machine in [idle(), readingBody(), processing(), writingStream(), closing()] {
            XCTAssertEqual(machine.inputClosed(), .now)
            XCTAssertFalse(machine.acceptsInput)
        }
    }

    func testPhaseDescriptionsAreNginxs() {
        XCTAssertEqual(idle().phaseDescription(requestBytesSeen: false), "waiting for request")
        XCTAssertEqual(idle().phaseDescription(requestBytesSeen: true), "reading client request headers")
        XCTAssertEqual(readingBody().phaseDescription(requestBytesSeen: false), "reading client request body")
        XCTAssertEqual(processing().phaseDescription(requestBytesSeen: false), "processing request")
        XCTAssertEqual(writingStream().phaseDescription(requestBytesSeen: false), "sending response to client")
        XCTAssertEqual(closing().phaseDescription(requestBytesSeen: false), "closing request")
    }
}
