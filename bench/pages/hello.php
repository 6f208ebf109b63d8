<?php
// Hello-world page for PHP-FPM, the same answer as hello.jl (PHP adds
// ";charset=UTF-8" itself, hello.jl writes it).
header('Content-Type: text/plain');
echo 'hello';
