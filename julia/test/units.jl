# Unit tests: wire format, headers, log escaping, environment switching.
using .JuliaFCGI
using .JuliaFCGI: FastCGI, Output, Log, Env, Posix, Access, Isolation
using .JuliaFCGI.FastCGI: ByteBuf

bytes_of(b::ByteBuf) = b.data[1:b.len]

@testset "records" begin
    b = FastCGI.put_record!(ByteBuf(16), FastCGI.STDOUT, 258, "hello")
    @test bytes_of(b) == UInt8[1, 6, 1, 2, 0, 5, 3, 0, codeunits("hello")..., 0, 0, 0]
    recs, rest = FastCGI.decode_records(bytes_of(b))
    @test rest == 0 && length(recs) == 1
    @test recs[1].type == FastCGI.STDOUT && recs[1].rid == 258 && String(recs[1].content) == "hello"

    # A stream is split into records of at most 65535 bytes, 8-byte padded.
    data = rand(UInt8, 150_000)
    b = FastCGI.put_stream!(ByteBuf(), FastCGI.STDOUT, 1, data)
    recs, rest = FastCGI.decode_records(bytes_of(b))
    @test rest == 0
    @test all(r -> length(r.content) <= FastCGI.MAX_CONTENT, recs)
    @test vcat([r.content for r in recs]...) == data
    @test b.len % 8 == 0
    @test FastCGI.put_stream!(ByteBuf(), FastCGI.STDOUT, 1, UInt8[]).len == 0

    b = FastCGI.put_end_request!(ByteBuf(), 7, 0x01020304, FastCGI.UNKNOWN_ROLE)
    @test bytes_of(b) == UInt8[1, 3, 0, 7, 0, 8, 0, 0, 1, 2, 3, 4, 3, 0, 0, 0]
    b = FastCGI.put_unknown_type!(ByteBuf(), 0x42)
    @test bytes_of(b) == UInt8[1, 11, 0, 0, 0, 8, 0, 0, 0x42, 0, 0, 0, 0, 0, 0, 0]
    # Incomplete trailing record is reported as rest.
    recs, rest = FastCGI.decode_records(bytes_of(b)[1:12])
    @test isempty(recs) && rest == 12
end

@testset "name-value pairs" begin
    long_name = "N" ^ 200
    long_value = "v" ^ 70_000
    b = ByteBuf()
    FastCGI.put_pair!(b, "A", "1")
    FastCGI.put_pair!(b, long_name, "short")
    FastCGI.put_pair!(b, "LONG", long_value)
    FastCGI.put_pair!(b, "EMPTY", "")
    d = bytes_of(b)
    @test d[1:2] == UInt8[1, 1]                        # 1-byte lengths
    @test d[5] == 0x80 && d[8] == 200                  # 4-byte name length
    out = Dict{String,String}()
    @test FastCGI.parse_pairs!(out, d, 1, length(d))
    @test out == Dict("A" => "1", long_name => "short", "LONG" => long_value, "EMPTY" => "")
    # Every truncation of the stream is detected, never read past the end.
    for cut in (1, 2, 3, 5, 7, 9, length(d) - 1)
        @test !FastCGI.parse_pairs!(Dict{String,String}(), d, 1, cut)
    end
    # A length field claiming more than there is.
    bad = UInt8[0x05, 0x80, 0xff, 0xff, 0xff, codeunits("NAME")...]
    @test !FastCGI.parse_pairs!(Dict{String,String}(), bad, 1, length(bad))
end

@testset "GET_VALUES" begin
    q = ByteBuf()
    for n in ("FCGI_MPXS_CONNS", "FCGI_MAX_CONNS", "NOT_A_VARIABLE")
        FastCGI.put_pair!(q, n, "")
    end
    b = ByteBuf()
    @test FastCGI.values_result!(b, q.data, 1, q.len)
    recs, _ = FastCGI.decode_records(bytes_of(b))
    @test recs[1].type == FastCGI.GET_VALUES_RESULT && recs[1].rid == 0
    vals = Dict{String,String}()
    FastCGI.parse_pairs!(vals, recs[1].content, 1, length(recs[1].content))
    @test vals == Dict("FCGI_MPXS_CONNS" => "0", "FCGI_MAX_CONNS" => "1")
    @test !FastCGI.values_result!(ByteBuf(), UInt8[0x09], 1, 1)
end

cgi(s) = (v = Vector{UInt8}(s); (v, length(v)))
function normalized(s)
    v, n = cgi(s)
    he, bs = Output.header_block(v, n)
    hdr = Output.normalize_headers!(ByteBuf(), v, max(he, 0))
    return String(bytes_of(hdr)), String(v[bs:n])
end

@testset "CGI headers" begin
    @test Output.header_block(cgi("Content-Type: text/plain\n\nbody")...) == (25, 27)
    @test Output.header_block(cgi("A: b\r\nC: d\r\n\r\nx")...) == (12, 15)
    @test Output.header_block(cgi("\nbody")...) == (0, 2)          # empty header block
    @test Output.header_block(cgi("")...) == (-1, 1)
    @test Output.header_block(cgi("<html>\n\n")...) == (-1, 1)      # not a header line
    @test Output.header_block(cgi("Content-Type: text/plain\nno blank line")...) == (-1, 1)
    @test Output.header_block(cgi("Bad Name: x\n\n")...) == (-1, 1)
    @test Output.header_block(cgi(": x\n\n")...) == (-1, 1)

    h, body = normalized("Content-Type: text/plain\n\nHello")
    @test h == "Content-Type: text/plain\r\n\r\n" && body == "Hello"
    h, body = normalized("Status: 404 Not Found\r\nX-A:   spaced  \r\n\r\nmissing")
    @test h == "Status: 404 Not Found\r\nX-A: spaced  \r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    @test body == "missing"
    h, body = normalized("content-TYPE:text/csv\n\n")
    @test h == "content-TYPE: text/csv\r\n\r\n" && body == ""
    h, body = normalized("just text, no headers\n")
    @test h == "Content-Type: text/html; charset=utf-8\r\n\r\n" && body == "just text, no headers\n"
end

status_of(text) = (io = Output.ResponseIO(); print(io, text); Output.put_pending!(io);
                   Output.status_code(io))

@testset "HTTP status for the access log" begin
    @test status_of("Content-Type: text/plain\n\nHello") == 200
    @test status_of("Status: 404 Not Found\r\nX-A: b\r\n\r\nmissing") == 404
    @test status_of("x-a: 1\nstatus:503\n\n") == 503
    @test status_of("Location: /elsewhere\n\n") == 302
    @test status_of("Location: /x\nStatus: 301 Moved Permanently\n\n") == 301
    @test status_of("Status: 20 short\n\n") == 200          # not a status: nginx's default
    @test status_of("Status: abc\n\n") == 200
    @test status_of("<html>no headers, X-Status: 500\n") == 200
    @test status_of("X-Status: 500\nContent-Type: text/plain\n\n") == 200
end

@testset "response records" begin
    a, b = Posix.socketpair()
    try
        io = Output.reset!(Output.ResponseIO(), b, 3)
        print(io, "Content-Type: text/plain\n\n", "x" ^ 100)
        io.err = "a note"
        @test Output.finish!(io, 5)
        buf = Vector{UInt8}(undef, 1 << 16)
        n = Posix.read_some(a, buf, 0, length(buf))
        recs, rest = FastCGI.decode_records(buf[1:n])
        @test rest == 0
        @test [r.type for r in recs] == [FastCGI.STDERR, FastCGI.STDERR, FastCGI.STDOUT,
                                         FastCGI.STDOUT, FastCGI.END_REQUEST]
        @test String(recs[3].content) == "Content-Type: text/plain\r\n\r\n" * "x" ^ 100
        @test all(r -> r.rid == 3, recs) && recs[5].content[4] == 5

    finally
        Posix.closefd(a); Posix.closefd(b)
    end
    # Past the threshold output is streamed; the total is intact. (Written to
    # a file: a socketpair would need a concurrent reader.)
    path, tmp = mktemp()
    close(tmp)
    fd = ccall(:open, Cint, (Cstring, Cint, Cint), path, 0o1101, 0o600)
    try
        io = Output.reset!(Output.ResponseIO(), fd, 4)
        print(io, "Content-Type: text/plain\n\n")
        big = repeat("0123456789", 60_000)
        for i in 1:60
            print(io, big[(i-1)*10_000+1:i*10_000])
        end
        @test io.streamed
        @test Output.finish!(io, 0)
        recs, rest = FastCGI.decode_records(read(path))
        @test rest == 0 && recs[end].type == FastCGI.END_REQUEST
        out = String(vcat([r.content for r in recs if r.type == FastCGI.STDOUT]...))
        @test out == "Content-Type: text/plain\r\n\r\n" * big
    finally
        Posix.closefd(fd)
        rm(path)
    end
end

@testset "log escaping" begin
    @test Log.escape_field("plain") == "plain"
    @test Log.escape_field("a\\b\nc\rd\te") == "a\\\\b\\nc\\rd\\te"
    line = Log.format_entry("warn", "two\nlines", ("REQUEST_URI" => "/x\ty",); control=true)
    @test line == "LOG\twarn\ttwo\\nlines\tREQUEST_URI=/x\\ty"
    @test !occursin('\n', Log.format_entry("error", "a\nb", (); control=false))
    @test Access.line("GET", "/a\tb?c", 404, 1234, "::1") ==
          "ACCESS\tGET\t/a\\tb?c\t404\t1234\t::1"
    @test Access.line("PÖST", "/ü\\\n\r", 0, 18446744073709551615, "") ==
          "ACCESS\tPÖST\t/ü\\\\\\n\\r\t0\t18446744073709551615\t"
    @test Access.line("GET", "/", 200, 7, "10.0.0.1") == "ACCESS\tGET\t/\t200\t7\t10.0.0.1"
end

@testset "access log batches" begin
    a, b = Posix.socketpair()
    JuliaFCGI.Control.CHAN.fd = b          # as if a master were there
    readable() = Posix.poll2(a, Posix.POLLIN, Cint(-1), Cshort(0), 0)[1] > 0
    buf = Vector{UInt8}(undef, 1 << 16)
    received() = String(buf[1:Posix.read_some(a, buf, 0, length(buf))])
    try
        t = UInt64(1_000_000_000)
        for i in 1:Access.BATCH-1
            Access.record("GET", "/$i", 200, i, "", t)
        end
        @test Access.pending() && !readable()
        Access.record("GET", "/last", 200, 1, "", t)       # the batch is full: sent
        @test !Access.pending() && readable()
        lines = split(received(), '\n'; keepempty=false)
        @test length(lines) == Access.BATCH
        @test lines[1] == "ACCESS\tGET\t/1\t200\t1\t" && lines[end] == "ACCESS\tGET\t/last\t200\t1\t"
        # A busy worker sends an entry once it is MAX_DELAY_NS old.
        Access.record("GET", "/a", 200, 1, "", t)
        @test Access.pending() && !readable()
        Access.record("GET", "/b", 200, 1, "", t + Access.MAX_DELAY_NS)
        @test !Access.pending() && count(==('\n'), received()) == 2
        # An idle (or leaving) worker sends what it has.
        Access.record("GET", "/c", 200, 1, "", t)
        Access.flush!()
        @test received() == "ACCESS\tGET\t/c\t200\t1\t\n"
        Access.flush!()
        @test !readable()
    finally
        JuliaFCGI.Control.CHAN.fd = Cint(-1)
        Posix.closefd(a); Posix.closefd(b)
    end
end

@testset "environment switching" begin
    saved = Dict(ENV)
    try
        st = Env.EnvState()
        base = copy(st.base)
        req1 = Dict("SCRIPT_FILENAME" => "/a.jl", "QUERY_STRING" => "x=1", "BAD=NAME" => "v",
                    "NUL" => "a\0b", "" => "empty")
        Env.switch!(st, req1)
        @test Dict(ENV) == Dict("SCRIPT_FILENAME" => "/a.jl", "QUERY_STRING" => "x=1")
        req2 = Dict("SCRIPT_FILENAME" => "/a.jl", "QUERY_STRING" => "x=2", "NEW" => "n")
        Env.switch!(st, req2)
        @test Dict(ENV) == req2
        ENV["PAGE_SET"] = "1"                  # a page changing ENV itself
        delete!(ENV, "NEW")
        @test Env.changed(st.snap)
        Env.switch!(st, Dict("ONLY" => "this"))
        @test Dict(ENV) == Dict("ONLY" => "this")
        ENV["LEAK"] = "x"
        Env.restore!(st)
        @test Dict(ENV) == base && Env.isrestored(st)
    finally
        for k in keys(ENV); delete!(ENV, k); end
        for (k, v) in saved; ENV[k] = v; end
    end
end

@testset "a request's queued tasks are stopped, the worker's stay queued" begin
    W = Isolation.workqueue()
    # A task is found in the queue by a log state of its own.
    queued(t) = Isolation.has_queued(W, t.logstate)
    # Everything is looked at before any @test: nothing here may yield.
    ours = @task nothing                     # queued before the request, as Distributed's is
    ours.logstate = Ref(:ours)
    schedule(ours)
    mark = Isolation.enter()
    first = Isolation.leave(mark)            # only the worker's task waits: left in place
    kept_alone = queued(ours)
    mark = Isolation.enter()
    page_task = @async nothing               # the page's: carries the request's marker
    seen = queued(page_task)
    second = Isolation.leave(mark)
    kept, stopped = queued(ours), !queued(page_task)
    after = Isolation.has_queued(W, Isolation.marker())
    @test first == (0, 0) && kept_alone
    @test seen && second == (1, 0)
    @test kept && stopped && !after
    wait(ours)                               # the worker's task still runs
    @test istaskdone(ours) && !istaskdone(page_task)
end

@testset "gathered sends (writev_all)" begin
    pieces = [rand(UInt8, 8), rand(UInt8, 3 << 20), UInt8[], rand(UInt8, 5), rand(UInt8, 1 << 20)]
    whole = reduce(vcat, pieces)
    iovs() = [Posix.IOVec(pointer(p), length(p)) for p in pieces]
    # A real reader process on the other end: many short sends, each moving
    # on inside the iovecs.
    a, b = Posix.socketpair()
    out = tempname()
    reader = run(pipeline(`cat`, stdin=RawFD(b), stdout=out), wait=false)
    Posix.closefd(b)
    rc = GC.@preserve pieces Posix.writev_all(a, iovs(); nonblocking=true, timeout_ms=10_000)
    Posix.closefd(a)
    wait(reader)
    @test rc == 0 && read(out) == whole
    rm(out)
    # A pipe (not a socket): writev(2).
    fds = Vector{Cint}(undef, 2)
    @test ccall(:pipe, Cint, (Ptr{Cint},), fds) == 0
    r, w = fds
    small = [pieces[1], pieces[4]]
    @test GC.@preserve small Posix.writev_all(w, [Posix.IOVec(pointer(p), length(p)) for p in small]) == 0
    got = Vector{UInt8}(undef, 13)
    @test Posix.read_some(r, got, 0, 13) == 13 && got == vcat(small...)
    Posix.closefd(r); Posix.closefd(w)
    # A peer that reads nothing: EAGAIN after the timeout, and what it got
    # is exactly the start of the whole.
    a, b = Posix.socketpair()
    try
        t = time_ns()
        @test GC.@preserve pieces Posix.writev_all(a, iovs(); nonblocking=true, timeout_ms=300) == Posix.EAGAIN
        @test 250 <= (time_ns() - t) / 1e6 < 3000
        Posix.set_nonblocking(b, true)
        buf = Vector{UInt8}(undef, length(whole))
        n = 0
        while (k = Posix.read_some(b, buf, n, length(buf) - n)) > 0
            n += k
        end
        @test 8 < n < length(whole) && buf[1:n] == whole[1:n]
    finally
        Posix.closefd(a); Posix.closefd(b)
    end
end

@testset "a large body is sent from the page's buffer, framed as before" begin
    a, b = Posix.socketpair()
    try
        body = rand(UInt8, 100 * 1024 + 3)
        io = Output.reset!(Output.ResponseIO(), a, 7)
        write(io, "Content-Type: application/octet-stream\r\n\r\n")
        write(io, body)
        @test Output.finish!(io, 0)
        r = read_response(b)
        records = r.records
        @test !r.timed_out && all(x -> x.rid == 7, records)
        @test Vector{UInt8}(r.stdout) ==
              vcat(Vector{UInt8}("Content-Type: application/octet-stream\r\n\r\n"), body)
        @test [x.type for x in records[end-1:end]] == [FastCGI.STDOUT, FastCGI.END_REQUEST]
        @test isempty(records[end-1].content)          # the empty STDOUT record
        @test all(x -> length(x.content) <= FastCGI.STREAM_CHUNK, records)
        Posix.shutdown_write(a)                       # and nothing after END_REQUEST
        @test !haskey(TestClient.PENDING, b) && Posix.read_some(b, Vector{UInt8}(undef, 16), 0, 16) == 0
        @test isempty(io.pieces) && io.out.len == 0   # nothing left for the next send
    finally
        Posix.closefd(a); Posix.closefd(b)
    end
end

@testset "a send to a peer that reads nothing gives up after its timeout" begin
    a, b = Posix.socketpair()
    try
        big = fill(UInt8('z'), 8 * 1024 * 1024)      # more than the pair's buffers
        t = time_ns()
        @test Posix.write_all(a, big; nonblocking=true, timeout_ms=300) == Posix.EAGAIN
        waited = (time_ns() - t) / 1e6
        @test 250 <= waited < 3000
        # What fits goes out at once, with no wait.
        c, d = Posix.socketpair()
        try
            t = time_ns()
            @test Posix.write_all(c, fill(UInt8('y'), 1024); nonblocking=true, timeout_ms=5000) == 0
            @test (time_ns() - t) / 1e6 < 1000
        finally
            Posix.closefd(c); Posix.closefd(d)
        end
    finally
        Posix.closefd(a); Posix.closefd(b)
    end
end
