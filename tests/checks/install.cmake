# install: `cmake --install` gives a usable package, tried as users would
# (tests/consumer/run.sh): a find_package(ioloop) project on ioloop::ioloop,
# ioloop::http and ioloop::http_static; plain `cc $(pkg-config ...)` builds on
# ioloop and ioloop-http; the installed helloworld serving with no
# LD_LIBRARY_PATH (RPATH); and an add_subdirectory(ioloop) project that gets
# no tool or test. Skipped in sanitizer builds, whose libraries need the
# sanitizer runtime to link, and without helloworld (IOLOOP_BUILD_TOOLS off).
if(NOT IOLOOP_SANITIZE AND TARGET helloworld)
  add_test(NAME install_consumer
    COMMAND ${CMAKE_COMMAND} -E env CMAKE=${CMAKE_COMMAND}
            bash ${CMAKE_CURRENT_SOURCE_DIR}/consumer/run.sh ${PROJECT_BINARY_DIR}
                 ${CMAKE_CURRENT_BINARY_DIR}/consumer-work ${PROJECT_SOURCE_DIR})
  set_tests_properties(install_consumer PROPERTIES TIMEOUT 600)
endif()
