# tools/helloworld: the seed's hello world on libioloop-http (included by
# tools/CMakeLists.txt). With IOLOOP_TLS (libioloop-tls built) it also serves
# https:// (--tls-cert/--tls-key); without it, it links no OpenSSL at all.
if(NOT TARGET helloworld)
  add_executable(helloworld ${PROJECT_SOURCE_DIR}/tools/helloworld.c)
  target_link_libraries(helloworld PRIVATE ioloop_http Threads::Threads)
  if(IOLOOP_TLS AND TARGET ioloop::tls)
    target_link_libraries(helloworld PRIVATE ioloop::tls)
    target_compile_definitions(helloworld PRIVATE IOLOOP_HELLO_TLS=1)
  endif()
  install(TARGETS helloworld RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
endif()
