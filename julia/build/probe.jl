# What `julia-fcgi sysimage build` needs to know about a julia, one fact a
# line, TAB separated:
#
#   julia  -J IMAGE --startup-file=no probe.jl
#
#   version   VERSION
#   image     the system image this julia started from (the default base)
#   library   a libjulia this process loaded (libjulia, libjulia-internal): linked against
#   base      the directory of Base's own sources (sysimg.jl), for a minimal base
#   stdlib    the directory of the standard libraries
#   cpu       the CPU Julia compiles for (Sys.CPU_NAME)
#   word      bits of a pointer
fact(k, v) = println(k, '\t', v)

fact("version", VERSION)
fact("image", unsafe_string(Base.JLOptions().image_file))
# From the process's own mappings: Libdl is a standard library on Julia 1.5,
# and a julia without it must be probed too.
libs = String[]
for line in eachline("/proc/self/maps")
    fields = split(line; limit=6)
    length(fields) == 6 || continue
    path = strip(fields[6])
    startswith(path, '/') || continue
    name = basename(path)
    if (startswith(name, "libjulia.so") || startswith(name, "libjulia-internal.so")) &&
       !(path in libs)
        push!(libs, path)
        fact("library", realpath(path))
    end
end
sysimg = Base.find_source_file("sysimg.jl")
sysimg === nothing || fact("base", normpath(dirname(sysimg)))
fact("stdlib", Sys.STDLIB)
fact("cpu", Sys.CPU_NAME)
fact("word", Sys.WORD_SIZE)
