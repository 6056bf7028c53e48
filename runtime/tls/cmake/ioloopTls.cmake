# Part of the ioloop CMake package: ioloop::tls (and ioloop::tls_static),
# loaded by ioloopConfig.cmake when libioloop-tls was installed.
include(CMakeFindDependencyMacro)
find_dependency(OpenSSL 3)
include("${CMAKE_CURRENT_LIST_DIR}/ioloopTlsTargets.cmake")
