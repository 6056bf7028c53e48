# layers: dependencies run one way, core <- runtime <- stream <- http
# (README, "Layout"). layers.includes greps the sources: a runtime/core/ file
# includes no header of a higher layer, runtime/ never includes http/, and
# only the listener (on_stream) reaches the stream layer's internals.
# layers.symbols reads the core's object files: every ioloop_* / ioloop__*
# name they use is defined by a core object (a call up, say loop.c into
# signals.c, fails it even if someone declared the function by hand).
add_test(NAME layers.includes
  COMMAND ${CMAKE_COMMAND} -DROOT=${PROJECT_SOURCE_DIR} -P ${CMAKE_CURRENT_LIST_DIR}/layers_check.cmake)
find_program(IOLOOP_NM NAMES nm)
if(IOLOOP_NM AND TARGET ioloop_core_objects)
  add_test(NAME layers.symbols
    COMMAND ${CMAKE_COMMAND} -DNM=${IOLOOP_NM} "-DOBJECTS=$<JOIN:$<TARGET_OBJECTS:ioloop_core_objects>,|>"
            -P ${CMAKE_CURRENT_LIST_DIR}/layers_check.cmake)
endif()
set_tests_properties(layers.includes PROPERTIES TIMEOUT 60)
