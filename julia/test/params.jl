# What the front ends need from the worker, in process: the CGI variable
# fix-ups (Params) and kept connections that yield to waiting ones (Server).
using .JuliaFCGI: Params, Config, Server, Control, FastCGI, Posix
using .JuliaFCGI.FastCGI: ByteBuf
using .TestClient: connect_unix, send_bytes, read_response, closed_by_peer, cgi_params

const JL = Config.load(Dict{String,String}())

fixed(env; s=JL) = Params.fixup!(Dict{String,String}(env), s)

@testset "CGI params fix-ups" begin
    # QUERY_STRING is always there (HAProxy leaves an empty one out).
    @test fixed(Dict("SCRIPT_FILENAME" => "/x.jl"))["QUERY_STRING"] == ""
    @test fixed(Dict("QUERY_STRING" => "a=1"))["QUERY_STRING"] == "a=1"

    # Apache mod_proxy_fcgi prefixes, as PHP-FPM strips them.
    sf(path) = fixed(Dict("SCRIPT_FILENAME" => path))["SCRIPT_FILENAME"]
    @test sf("proxy:fcgi://localhost/var/www/a.jl") == "/var/www/a.jl"
    @test sf("proxy:fcgi://127.0.0.1:9000/var/www/a.jl?x=1&y") == "/var/www/a.jl"
    @test sf("proxy:fcgi://[::1]:9000/a.jl") == "/a.jl"
    @test sf("proxy:balancer://pool/var/www/a.jl") == "/var/www/a.jl"
    @test sf("proxy:fcgi://localhost") == "proxy:fcgi://localhost"      # no path: left alone
    @test sf("proxy:http://localhost/a.jl") == "proxy:http://localhost/a.jl"
    @test sf("/var/www/a.jl?x") == "/var/www/a.jl?x"                     # no prefix: a file name
    env = fixed(Dict("SCRIPT_FILENAME" => "proxy:fcgi://localhost/w/a.jl",
                     "PATH_TRANSLATED" => "proxy:fcgi://localhost/w/extra"))
    @test env["PATH_TRANSLATED"] == "/w/extra"

    dir = realpath(mktempdir())
    try
        write(joinpath(dir, "page.jl"), "")
        write(joinpath(dir, "café.jl"), "")
        write(joinpath(dir, "notes.txt"), "")
        mkpath(joinpath(dir, "Pkg.jl"))
        write(joinpath(dir, "Pkg.jl", "page.jl"), "")
        symlink(joinpath(dir, "Pkg.jl"), joinpath(dir, "dirlink.jl"))
        p(rest) = dir * rest
        split_env(rest; extra...) = fixed(Dict("SCRIPT_FILENAME" => p(rest),
                                               "SCRIPT_NAME" => rest, "DOCUMENT_ROOT" => dir * "/",
                                               (String(k) => v for (k, v) in extra)...))

        # Apache ProxyPassMatch, HAProxy without path-info: split at the page.
        env = split_env("/page.jl/extra/path")
        @test env["SCRIPT_FILENAME"] == p("/page.jl") && env["PATH_INFO"] == "/extra/path"
        @test env["SCRIPT_NAME"] == "/page.jl" && env["PATH_TRANSLATED"] == p("/extra/path")
        env = split_env("/page.jl/")
        @test env["SCRIPT_FILENAME"] == p("/page.jl") && env["PATH_INFO"] == "/"
        env = split_env("/Pkg.jl/page.jl/x.jl/y")    # the leftmost *file* wins
        @test env["SCRIPT_FILENAME"] == p("/Pkg.jl/page.jl") && env["PATH_INFO"] == "/x.jl/y"
        env = split_env("/café.jl/ü")
        @test env["SCRIPT_FILENAME"] == p("/café.jl") && env["PATH_INFO"] == "/ü"
        # Through Apache's prefix in one go; a SCRIPT_NAME that does not end
        # in the trailing path is left as the front end sent it.
        env = fixed(Dict("SCRIPT_FILENAME" => "proxy:fcgi://localhost" * p("/page.jl/a/b"),
                         "SCRIPT_NAME" => "/other"))
        @test env["SCRIPT_FILENAME"] == p("/page.jl") && env["PATH_INFO"] == "/a/b"
        @test env["SCRIPT_NAME"] == "/other" && !haskey(env, "PATH_TRANSLATED")
        # A front end's PATH_INFO is replaced by what the file system says.
        @test split_env("/page.jl/a"; PATH_INFO="/b")["PATH_INFO"] == "/a"

        # Never split: a real page, a directory, a missing file, a non-page,
        # `.`/`..` components, NUL, an extension that is not allowed.
        unchanged(rest; s=JL) = (e = fixed(Dict("SCRIPT_FILENAME" => p(rest)); s=s);
                                 e["SCRIPT_FILENAME"] == p(rest) && !haskey(e, "PATH_INFO"))
        @test unchanged("/page.jl")
        @test unchanged("/Pkg.jl/page.jl")           # Pkg.jl is a directory
        @test unchanged("/dirlink.jl/page.jl")       # … behind a symlink
        @test unchanged("/Pkg.jl/nope.jl/x")
        @test unchanged("/missing.jl/x")
        @test unchanged("/notes.txt/x")
        @test unchanged("/page.jl/../page.jl")
        @test unchanged("/Pkg.jl/../page.jl/x")
        @test unchanged("/./page.jl/x")
        @test unchanged("/page.jl/x/..")
        @test unchanged("/page.jl\0/x")
        @test unchanged("/.jl/x")
        @test unchanged("/page.jl/x"; s=Config.load(Dict("JULIA_FCGI_EXTENSIONS" => ".jlp")))
        s2 = Config.load(Dict("JULIA_FCGI_EXTENSIONS" => ".txt,.jl"))
        @test fixed(Dict("SCRIPT_FILENAME" => p("/notes.txt/x")); s=s2)["PATH_INFO"] == "/x"

        # The usual request costs no allocation (and so no stat either).
        hot = Dict("SCRIPT_FILENAME" => p("/Pkg.jl/page.jl"), "QUERY_STRING" => "")
        hot2 = Dict("SCRIPT_FILENAME" => p("/page.jl"), "QUERY_STRING" => "a=1")
        Params.fixup!(hot2, JL)
        @test (@allocated Params.fixup!(hot2, JL)) == 0
        @test Params.has_candidate(p("/Pkg.jl/page.jl"), JL.extensions)   # one stat, no split
    finally
        rm(dir; recursive=true, force=true)
    end
end

# ------------------------------------------------------------------ kept connections

const INJECT = Ref{Any}(() -> nothing)     # called by a test page (see below)
const HELLO = normpath(joinpath(@__DIR__, "..", "..", "examples", "hello.jl"))
hello_request(rid; keep=true) = FastCGI.put_request!(ByteBuf(), rid, cgi_params(HELLO); keep=keep)
is_hello(r) = endswith(r.stdout, "Hello, world!\n") && r.proto == FastCGI.REQUEST_COMPLETE

"""A listening unix socket (non-blocking, as the worker's) and its path."""
function test_listener()
    path = joinpath(mktempdir(), "l.sock")
    fd = TestClient.listen_unix(path)
    Posix.set_nonblocking(fd, true)
    return fd, path
end

@testset "kept connections yield to waiting ones" begin
    lfd, lpath = test_listener()
    w = Server.Worker(JL, lfd; scoreboard=false, keep_idle_ms=300)
    try
        # Nobody waiting: an idle kept connection is closed after keep_idle_ms.
        a, b = Posix.socketpair()
        send_bytes(a, hello_request(1))
        t = time()
        Server.serve_connection!(w, b)
        @test 0.25 < time() - t < 5
        @test is_hello(read_response(a; timeout=5)) && closed_by_peer(a; timeout=5)
        Posix.closefd(a)

        # A connection waits on the listener: after its response the kept
        # one is given up at once and the waiting one is accepted.
        q = connect_unix(lpath)
        send_bytes(q, hello_request(7; keep=false))
        a, b = Posix.socketpair()
        send_bytes(a, hello_request(1))
        t = time()
        Server.serve_connection!(w, b)
        @test time() - t < 0.25 && w.kept.handover >= 0
        @test is_hello(read_response(a; timeout=5)) && closed_by_peer(a; timeout=5)
        @test Server.accept_once!(w) == Server.ACCEPTED && w.kept.handover == -1
        r = read_response(q; timeout=5)
        @test is_hello(r) && r.rid == 7 && closed_by_peer(q; timeout=5)
        Posix.closefd(a); Posix.closefd(q)

        # A request already sent on the kept connection is served first.
        q = connect_unix(lpath)
        a, b = Posix.socketpair()
        two = FastCGI.put_request!(hello_request(1), 2, cgi_params(HELLO))
        send_bytes(a, two)
        Server.serve_connection!(w, b)
        r1 = read_response(a; timeout=5); r2 = read_response(a; timeout=5)
        @test is_hello(r1) && is_hello(r2) && r2.rid == 2 && closed_by_peer(a; timeout=5)
        @test w.kept.handover >= 0
        Posix.closefd(q)                 # the front end gave up: served as an EOF
        @test Server.accept_once!(w) == Server.ACCEPTED && w.kept.handover == -1
        Posix.closefd(a)

        # The front end reuses the connection while its "last" response is
        # being sent (here: the page itself sends the next request): that
        # request is served, and the connection ends after it.
        page = joinpath(dirname(lpath), "inject.jl")
        write(page, "Main.INJECT[]()\nprint(\"Content-Type: text/plain\\r\\n\\r\\ninjected\")\n")
        q = connect_unix(lpath)
        a, b = Posix.socketpair()
        once = Ref(true)
        Main.INJECT[] = () -> (once[] && send_bytes(a, hello_request(2)); once[] = false)
        send_bytes(a, FastCGI.put_request!(ByteBuf(), 1, cgi_params(page)))
        Server.serve_connection!(w, b)
        r1 = read_response(a; timeout=5); r2 = read_response(a; timeout=5)
        @test endswith(r1.stdout, "injected") && is_hello(r2) && r2.rid == 2
        @test closed_by_peer(a; timeout=5) && w.kept.handover >= 0
        Posix.closefd(q)
        @test Server.accept_once!(w) == Server.ACCEPTED
        Posix.closefd(a)

        # Told to stop while idle: the next request is awaited briefly (to
        # close right after its response), then the connection is closed.
        ours, theirs = Posix.socketpair()
        Control.CHAN.fd = theirs
        w2 = Server.Worker(JL, lfd; scoreboard=false)
        try
            a, b = Posix.socketpair()
            send_bytes(a, hello_request(1))
            # STOP comes while the worker idles (this thread is in poll(2) then).
            run(pipeline(`sh -c 'sleep 0.5; printf "STOP\n"'`; stdout=RawFD(ours)); wait=false)
            t = time()
            Server.serve_connection!(w2, b)
            @test 1.3 < time() - t < 6 && w2.kept.handover == -1 && Control.stopping()
            @test is_hello(read_response(a; timeout=5)) && closed_by_peer(a; timeout=5)
            Posix.closefd(a)
        finally
            Control.CHAN.fd = Cint(-1)
            Control.CHAN.stopping = false
            Control.CHAN.reason = ""
            Posix.closefd(ours); Posix.closefd(theirs)
        end
    finally
        w.kept.handover >= 0 && Posix.closefd(w.kept.handover)
        Posix.closefd(lfd)
        rm(dirname(lpath); recursive=true, force=true)
    end
end
