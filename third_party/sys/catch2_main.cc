// The Catch2 main translation unit, compiled once for every test (it takes ~20 s to compile).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>
