# exports: the shared libraries export only the public API. `nm -D
# --defined-only` on each must list nothing but ioloop_* names, and no
# internal ioloop__* one (-fvisibility=hidden plus IOLOOP_API); and every
# public declaration carries IOLOOP_API (tools/annotate-api --check), so no
# public function goes missing from the export list either.
find_program(IOLOOP_NM NAMES nm)
find_program(IOLOOP_PYTHON3 python3 HINTS /usr/bin)
if(IOLOOP_NM)
  foreach(lib ioloop ioloop_http ioloop_tls)
    if(TARGET ${lib})
      add_test(NAME exports.${lib}
        COMMAND ${CMAKE_COMMAND} -DNM=${IOLOOP_NM} -DLIB=$<TARGET_FILE:${lib}>
                -P ${CMAKE_CURRENT_LIST_DIR}/exports_check.cmake)
      set_tests_properties(exports.${lib} PROPERTIES TIMEOUT 60)
    endif()
  endforeach()
endif()
if(IOLOOP_PYTHON3)
  add_test(NAME exports.annotations COMMAND ${IOLOOP_PYTHON3} ${PROJECT_SOURCE_DIR}/tools/annotate-api --check)
  set_tests_properties(exports.annotations PROPERTIES TIMEOUT 60)
endif()
