# The sources of a minimal base image: Base and only the standard libraries
# named, the way Julia's own build (and PackageCompiler's `filter_stdlibs`)
# makes one. Run by `julia-fcgi sysimage build --base minimal` as
#
#   julia --startup-file=no base.jl OUTDIR STDLIB,STDLIB,…
#
# It copies Base's sources (read only where julia is installed) to
# OUTDIR/base and writes OUTDIR/base/sysimg-julia-fcgi.jl: Base's sysimg.jl
# with its list of standard libraries cut down to those named. The master
# then compiles, in OUTDIR/base, first the compiler (corecompiler.ji), then
# with it Base and those libraries (sys.ji), on which build.jl puts the pool.
#
# Prints the file it wrote.
length(ARGS) == 2 || error("usage: base.jl OUTDIR STDLIB,STDLIB,…")
const OUT = ARGS[1]
const WANTED = filter(!isempty, split(ARGS[2], ','))

sysimg = Base.find_source_file("sysimg.jl")
sysimg === nothing && error("Base's sources (sysimg.jl) are not installed with this julia")
src = dirname(sysimg)
dst = joinpath(OUT, "base")
cp(src, dst; force=true)
# Copies of read-only files are read only; the build writes next to them.
for (root, dirs, files) in walkdir(dst), name in vcat(dirs, files)
    chmod(joinpath(root, name), 0o755)
end
chmod(dst, 0o755)

for name in WANTED
    isdir(joinpath(Sys.STDLIB, name)) ||
        error("$name is not a standard library of julia $VERSION (none in $(Sys.STDLIB))")
end

text = read(sysimg, String)
list = "stdlibs = [" * join(":" .* WANTED, ",\n        ") * "]"
out = replace(text, r"stdlibs = \[(.*?)\]"s => list; count=1)
out == text && !isempty(WANTED) && error("cannot find the list of standard libraries in $sysimg")
# A base image built here keeps no exit hooks of the build process.
out *= "\nempty!(Base.atexit_hooks)\n"
file = joinpath(dst, "sysimg-julia-fcgi.jl")
write(file, out)
println(file)
