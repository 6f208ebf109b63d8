# Included by include.jl; `include` paths are relative to the including file.
greeting(name) = "Hello, $(name)!"
