# A request's deadlines and parked connections, in process: a Worker on a
# test listener, raw FastCGI from this process (INTERFACE.md, "Deadlines").
using .JuliaFCGI: Config, Server, FastCGI, Posix, Requests, Pages
using .JuliaFCGI.FastCGI: ByteBuf
using .TestClient: connect_unix, send_bytes, read_response, closed_by_peer, cgi_params

const DL = Config.with(Config.load(Dict{String,String}()); first_byte_timeout_ms=300,
                       header_timeout_ms=800, body_timeout_ms=500, body_min_rate=0)
const HELLO_PAGE = normpath(joinpath(@__DIR__, "..", "..", "examples", "hello.jl"))
hello_req(rid=1; keep=false) = FastCGI.put_request!(ByteBuf(), rid, cgi_params(HELLO_PAGE); keep=keep)
hello_bytes(rid=1) = (b = hello_req(rid); b.data[1:b.len])
said_hello(r) = endswith(r.stdout, "Hello, world!\n") && r.proto == FastCGI.REQUEST_COMPLETE

@testset "the request head, as nginx sends it" begin
    b = hello_bytes()
    n = length(b)
    stdin_at = n - 7              # the empty STDIN record ends the request
    @test FastCGI.head_complete(b, 1, n)
    @test FastCGI.head_complete(b, 1, stdin_at - 1)                 # params ended
    @test !FastCGI.head_complete(b, 1, stdin_at - 9)                # not the empty PARAMS
    @test !FastCGI.head_complete(b, 1, 0) && !FastCGI.head_complete(b, 1, 5)
    @test !FastCGI.head_complete(b, 1, 16)                          # BEGIN_REQUEST alone
    @test FastCGI.head_complete(Vector{UInt8}("GET / HTTP/1.1"), 1, 1)   # refused at once
    gv = FastCGI.put_header!(ByteBuf(), FastCGI.GET_VALUES, 0, 0, 0)
    @test FastCGI.head_complete(gv.data, 1, gv.len)                 # management: answered
    h = FastCGI.decode_header(b, 1)
    @test (h.version, h.type, h.rid, h.clen, FastCGI.record_len(h)) ==
          (0x01, FastCGI.BEGIN_REQUEST, 1, 8, 16)
    @test (@allocated FastCGI.head_complete(b, 1, n)) == 0
end

@testset "idle and slow new connections are parked, not served" begin
    lfd, lpath = test_listener()
    w = Server.Worker(DL, lfd; scoreboard=false)
    parked() = length(w.arrivals.parked)
    try
        # A silent connection, and a request behind it: the silent one is
        # set aside, the request served.
        a = connect_unix(lpath)
        b = connect_unix(lpath)
        send_bytes(b, hello_req())
        t = time()
        @test Server.accept_once!(w) == Server.ACCEPTED && parked() == 1
        @test Server.accept_once!(w) == Server.ACCEPTED && parked() == 1
        @test said_hello(read_response(b; timeout=5)) && time() - t < 1
        # Its request comes after all: it is served from the parked set.
        send_bytes(a, hello_req())
        @test Server.accept_once!(w) == Server.ACCEPTED && parked() == 0
        @test said_hello(read_response(a; timeout=5))
        Posix.closefd(a); Posix.closefd(b)

        # Under steady load the listener never empties: a parked connection
        # whose request has come is served before the next new one (it was
        # accepted first), not left to its deadline.
        a = connect_unix(lpath)
        b = connect_unix(lpath)
        send_bytes(b, hello_req())
        Server.accept_once!(w); Server.accept_once!(w)
        @test said_hello(read_response(b; timeout=5)) && parked() == 1
        send_bytes(a, hello_req())
        c = connect_unix(lpath)
        send_bytes(c, hello_req())
        @test Server.accept_once!(w) == Server.ACCEPTED && parked() == 0
        @test said_hello(read_response(a; timeout=5))
        Server.accept_once!(w)
        @test said_hello(read_response(c; timeout=5))
        Posix.closefd(a); Posix.closefd(b); Posix.closefd(c)

        # A head that dribbles in: parked with its bytes, served once whole.
        full = hello_bytes()
        a = connect_unix(lpath)
        send_bytes(a, full[1:20])
        b = connect_unix(lpath)
        send_bytes(b, hello_req())
        Server.accept_once!(w); Server.accept_once!(w)
        @test said_hello(read_response(b; timeout=5)) && parked() == 1
        @test w.arrivals.parked[1].bytes == full[1:20]
        send_bytes(a, full[21:40])
        Server.accept_once!(w)
        @test parked() == 1 && length(w.arrivals.parked[1].bytes) == 40
        send_bytes(a, full[41:end])
        Server.accept_once!(w)
        @test parked() == 0 && said_hello(read_response(a; timeout=5))
        Posix.closefd(a); Posix.closefd(b)

        # Parked and silent: closed at first_byte_timeout; partial: at
        # header_timeout, both from their accept.
        a = connect_unix(lpath)
        s = connect_unix(lpath)
        send_bytes(s, full[1:20])
        b = connect_unix(lpath)
        send_bytes(b, hello_req())
        t = time()
        for _ in 1:3
            Server.accept_once!(w)
        end
        @test said_hello(read_response(b; timeout=5)) && parked() == 2
        while parked() == 2 && time() - t < 5
            Server.accept_once!(w)
        end
        @test parked() == 1 && 0.25 < time() - t < 0.8 && closed_by_peer(a; timeout=1)
        while parked() == 1 && time() - t < 5
            Server.accept_once!(w)
        end
        @test parked() == 0 && 0.75 < time() - t < 2 && closed_by_peer(s; timeout=1)
        Posix.closefd(a); Posix.closefd(b); Posix.closefd(s)

        # Nobody else waiting: a new connection is waited for, up to its
        # deadline, and never parked.
        a = connect_unix(lpath)
        t = time()
        Server.accept_once!(w)
        @test parked() == 0 && 0.25 < time() - t < 1 && closed_by_peer(a; timeout=1)
        Posix.closefd(a)

        # More than the worker may park: the oldest gives way.
        cap = w.arrivals.cap
        @test 16 <= cap <= Server.MAX_PARKED
        small = Server.Worker(DL, lfd; scoreboard=false)
        small.arrivals.cap = 2
        conns = [connect_unix(lpath) for _ in 1:3]
        b = connect_unix(lpath)
        send_bytes(b, hello_req())
        for _ in 1:4
            Server.accept_once!(small)
        end
        @test length(small.arrivals.parked) == 2 && closed_by_peer(conns[1]; timeout=1)
        @test said_hello(read_response(b; timeout=5))
        foreach(Posix.closefd, [conns; b])
        foreach(p -> Posix.closefd(p.fd), small.arrivals.parked)
    finally
        foreach(p -> Posix.closefd(p.fd), w.arrivals.parked)
        Posix.closefd(lfd)
        rm(dirname(lpath); recursive=true, force=true)
    end
end

@testset "a request being read has deadlines" begin
    w = Server.Worker(DL, -1; scoreboard=false)
    # The body stops coming: 408 at body_timeout after the params.
    a, b = Posix.socketpair()
    p = ByteBuf()
    for (k, v) in cgi_params(HELLO_PAGE; method="POST", extra=["CONTENT_LENGTH" => "100"])
        FastCGI.put_pair!(p, k, v)
    end
    req = FastCGI.put_begin_request!(ByteBuf(), 1)
    FastCGI.put_record!(req, FastCGI.PARAMS, 1, p.data[1:p.len])
    FastCGI.put_empty!(req, FastCGI.PARAMS, 1)
    FastCGI.put_record!(req, FastCGI.STDIN, 1, Vector{UInt8}("only part"))
    send_bytes(a, req)
    t = time()
    Server.serve_connection!(w, b)
    r = read_response(a; timeout=5)
    @test startswith(r.stdout, "Status: 408 Request Timeout\r\n") && 0.45 < time() - t < 3
    @test occursin("body_timeout", r.stderr) && closed_by_peer(a; timeout=1)
    Posix.closefd(a)

    # A body arriving at body_min_rate earns time: 2 KiB at 1 KiB/s → 0.5 + 2 s.
    slow = Server.Worker(Config.with(DL; body_min_rate=1024), -1; scoreboard=false)
    @test Requests.deadline(slow.settings, Requests.Request(Requests.BODY, 1, false, ByteBuf(),
              zeros(UInt8, 2048), Dict{String,String}(), 0, 0)) == UInt64(2_500_000_000)

    # Only a management record, then nothing: header_timeout from the accept.
    a, b = Posix.socketpair()
    send_bytes(a, FastCGI.put_header!(ByteBuf(), FastCGI.GET_VALUES, 0, 0, 0))
    t = time()
    Server.serve_connection!(w, b)
    @test 0.75 < time() - t < 3 && closed_by_peer(a; timeout=1)
    Posix.closefd(a)

    # A kept connection's next request counts from its first byte: idle
    # before it is no part of it (1 s of nothing, then a whole request,
    # sent by a child process while this thread is in poll(2)).
    a, b = Posix.socketpair()
    first = hello_req(1; keep=true)
    send_bytes(a, first)
    next = tempname()
    write(next, hello_bytes(2))
    run(pipeline(`sh -c "sleep 1; cat $next"`; stdout=RawFD(a)); wait=false)
    Server.serve_connection!(w, b)
    r1 = read_response(a; timeout=5); r2 = read_response(a; timeout=5)
    @test said_hello(r1) && said_hello(r2) && r2.rid == 2
    Posix.closefd(a)
    rm(next; force=true)
end

@testset "the worker says why it leaves" begin
    rt = Pages.Runtime(DL)
    @test Server.exit_reason(rt) == "page called exit()"
    rt.retiring = "page left background work running"
    @test Server.exit_reason(rt) == "page left background work running"
end
