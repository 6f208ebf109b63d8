# On the pool sysimage only (runtests.jl includes this when the worker's
# modules came with the image; tests/sysimage.rs runs it so): what belongs
# to a process must be this process's, never the build's frozen in.
using .JuliaFCGI: Env

println("worker tests: from the pool sysimage ", unsafe_string(Base.JLOptions().image_file))

@testset "from the pool sysimage" begin
    # Loaded from the image, not generating one.
    @test ccall(:jl_generating_output, Cint, ()) == 0
    @test isdefined(Main, :JuliaFCGI)
    # C's `environ` where this process has it (a constant computed while
    # loading held the build's address, and the first request crashed).
    @test Env.environ() == cglobal(:environ, Ptr{Ptr{UInt8}})
    before = Dict(ENV)
    st = Env.EnvState()
    Env.switch!(st, Dict("JULIA_FCGI_IMAGE_TEST" => "1"))
    @test Dict(ENV) == Dict("JULIA_FCGI_IMAGE_TEST" => "1")
    @test !Env.isrestored(st)
    Env.restore!(st)
    @test Dict(ENV) == before
    # Base's and Sys's start-up ran in this process (build.jl saw them skipped).
    @test Sys.BINDIR == ccall(:jl_get_julia_bindir, Any, ())::String
    @test !isempty(DEPOT_PATH) && !isempty(LOAD_PATH)
    @test stdout isa IO && isopen(stdout)
end
